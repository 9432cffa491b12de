//! How a spec model's parameters are laid out in a Hugging Face checkpoint, as data.
//!
//! The spec declares it in an `hf` item (checked by `compiler::sema::hf`); [`Family`] is that
//! declaration made ready for use: which `config.json` keys set which hyperparameters, which keys
//! must hold the values the spec assumes (GPT-2's `gelu_new`, T5's ReLU feed-forward and tied
//! head), and one [`TensorRule`] per Hugging Face tensor: its name pattern, the Kiln parameters it
//! is made of (concatenated along Kiln's output axis: GPT-2's fused `c_attn` is q, k, v) and
//! whether it is stored transposed (`nn.Linear` is `[out, in]`, Kiln and GPT-2's `Conv1D` are
//! `[in, out]`). Import ([`Family::from_hf`]) and export ([`Family::to_hf`]) are both generated
//! from it; nothing here is written per family.
//!
//! What needs no rule is stated here so a reader need not wonder: RoPE in Kiln's stdlib is the
//! half-split (`rotate_half`) convention that Hugging Face LLaMA files use, so q/k rows are not
//! permuted; GQA's `repeat_kv` in the stdlib interleaves query heads onto kv heads exactly as
//! `transformers` does; T5's relative bias exists once per stack in Kiln and lives in block 0 in
//! the file, which the rule's name pattern says; tied tensors (`lm_head.weight` of GPT-2 and T5,
//! T5's per-stack `embed_tokens`) are never written and ignored when present.

use std::collections::BTreeMap;
use std::fmt;

use miette::Diagnostic;
use serde_json::{Map, Value};

use kiln_compiler::sema::hf::{match_pattern, HfLayout, HfLiteral};
use kiln_compiler::sema::Value as SemaValue;

use super::HfConfig;
use crate::checkpoint::{HostTensor, Shape, TensorMap};

/// How a hyperparameter is spelled in JSON: as the spec's own bound value is typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigKind {
    Int,
    Float,
    Str,
}

/// One `config.json` key that sets a spec hyperparameter. Keys may be dotted paths
/// (`rope_parameters.rope_theta`). On import the first present key of `keys` wins; export writes
/// `keys[0]`. An absent key leaves the spec's own value (the spec's defaults follow
/// `transformers`' defaults).
#[derive(Debug, Clone)]
pub struct ConfigKey {
    pub hparam: String,
    pub keys: Vec<String>,
    pub kind: ConfigKind,
}

/// A `config.json` key whose value the spec assumes; export writes the first allowed value.
/// `absent_ok`: an absent (or null) key means the assumed value (the `transformers` default).
#[derive(Debug, Clone)]
pub struct FixedKey {
    pub key: String,
    pub allowed: Vec<Value>,
    pub absent_ok: bool,
}

/// One Hugging Face tensor. `{i}` in the patterns stands for a layer index.
#[derive(Debug, Clone)]
pub struct TensorRule {
    pub hf: String,
    /// Kiln parameters concatenated along their last axis (in Kiln's layout) make the tensor.
    pub kiln: Vec<String>,
    /// The file stores the transpose of Kiln's `[in, out]` layout.
    pub transpose: bool,
}

/// Which loss `transformers` computes from `labels`.
pub use kiln_compiler::sema::hf::HfLoss as LossKind;

/// The Hugging Face layout of one spec model, from its `hf` item.
#[derive(Debug, Clone)]
pub struct Family {
    /// The spec's `model` block.
    pub model: String,
    pub model_type: String,
    pub architecture: String,
    pub config: Vec<ConfigKey>,
    pub fixed: Vec<FixedKey>,
    pub tensors: Vec<TensorRule>,
    /// Names `transformers` ties to another tensor (never in the file).
    pub tied: Vec<String>,
    pub loss: LossKind,
}

impl Family {
    /// The layout a spec declares, with each hyperparameter's JSON kind taken from the model's
    /// bound value (`hparams`, as `sema::Instance::hparams`).
    pub fn from_layout(layout: &HfLayout, hparams: &[(String, SemaValue)]) -> Family {
        let kind = |h: &str| match hparams.iter().find(|(k, _)| k == h).map(|(_, v)| v) {
            Some(SemaValue::Float(_)) => ConfigKind::Float,
            Some(SemaValue::Int(_)) => ConfigKind::Int,
            _ => ConfigKind::Str,
        };
        let literal = |l: &HfLiteral| match l {
            HfLiteral::Str(s) => Value::String(s.clone()),
            HfLiteral::Int(n) => serde_json::json!(n),
            HfLiteral::Float(x) => serde_json::json!(x),
            HfLiteral::Bool(b) => Value::Bool(*b),
            HfLiteral::None => Value::Null,
        };
        Family {
            model: layout.model.clone(),
            model_type: layout.model_type.clone(),
            architecture: layout.architecture.clone(),
            config: layout
                .config
                .iter()
                .map(|c| ConfigKey {
                    hparam: c.hparam.clone(),
                    keys: c.keys.clone(),
                    kind: kind(&c.hparam),
                })
                .collect(),
            fixed: layout
                .require
                .iter()
                .map(|r| FixedKey {
                    key: r.key.clone(),
                    allowed: r.allowed.iter().map(literal).collect(),
                    absent_ok: r.allowed.contains(&HfLiteral::None),
                })
                .collect(),
            tensors: layout
                .tensors
                .iter()
                .map(|t| TensorRule {
                    hf: t.hf.clone(),
                    kiln: t.parts.clone(),
                    transpose: t.transpose,
                })
                .collect(),
            tied: layout.tied.clone(),
            loss: layout.loss,
        }
    }
}

/// Why a checkpoint does not fit a family's layout.
#[derive(Debug, thiserror::Error, Diagnostic)]
pub enum MappingError {
    #[error("tensor `{tensor}` (shape {shape}, for Kiln `{kiln}`) is missing from the checkpoint")]
    #[diagnostic(code(hf::missing_tensor))]
    Missing {
        tensor: String,
        shape: Shape,
        kiln: String,
    },
    #[error("tensor `{tensor}` (shape {shape}) in the checkpoint is not a parameter of the model")]
    #[diagnostic(
        code(hf::extra_tensor),
        help("the checkpoint has more layers or modules than the spec's model; check `config.json` and `--model`")
    )]
    Extra { tensor: String, shape: Shape },
    #[error("tensor `{tensor}` has shape {found} in the checkpoint but the model needs {expected} (Kiln `{kiln}`)")]
    #[diagnostic(code(hf::shape_mismatch))]
    Shape {
        tensor: String,
        found: Shape,
        expected: Shape,
        kiln: String,
    },
    #[error("Kiln parameter `{param}` has no Hugging Face name in the `{family}` mapping")]
    #[diagnostic(
        code(hf::unmapped_param),
        help("the spec's model has a parameter the Hugging Face layout lacks; only the published architecture can be exported")
    )]
    Unmapped { param: String, family: String },
    #[error("Kiln parameter `{param}` is missing (the mapping of `{tensor}` needs it)")]
    #[diagnostic(code(hf::missing_param))]
    MissingParam { param: String, tensor: String },
    #[error("`config.json`: `{key}` is {found}, but Kiln's `{family}` spec assumes {expected}")]
    #[diagnostic(
        code(hf::unsupported_config),
        help("this variant of the architecture is not what the spec describes")
    )]
    Fixed {
        key: String,
        found: String,
        expected: String,
        family: String,
    },
    #[error("`config.json`: `model_type` is `{found}`, but `--spec`'s model `{model}` reads `{expected}` checkpoints")]
    #[diagnostic(code(hf::model_type))]
    ModelType {
        found: String,
        expected: String,
        model: String,
    },
    #[error("`config.json`: `{key}` is {found}, not {kind}")]
    #[diagnostic(code(hf::config))]
    ConfigType {
        key: String,
        found: String,
        kind: &'static str,
    },
    #[error("the checkpoint does not fit the `{family}` layout ({count} problem{})", if *.count == 1 { "" } else { "s" })]
    #[diagnostic(code(hf::incompatible))]
    Incompatible {
        family: String,
        count: usize,
        #[related]
        problems: Vec<MappingError>,
    },
}

impl fmt::Display for ConfigKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConfigKind::Int => "an unsigned integer",
            ConfigKind::Float => "a number",
            ConfigKind::Str => "a string",
        })
    }
}

/// A hyperparameter value read from or written to `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub enum HfHyper {
    Int(i64),
    Float(f64),
    Str(String),
}

/// The value at a dotted path.
fn lookup<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = v;
    for part in path.split('.') {
        cur = cur.get(part)?;
    }
    (!cur.is_null()).then_some(cur)
}

fn insert_path(obj: &mut Map<String, Value>, path: &str, value: Value) {
    match path.split_once('.') {
        None => {
            obj.insert(path.to_string(), value);
        }
        Some((head, rest)) => {
            let entry = obj
                .entry(head.to_string())
                .or_insert_with(|| Value::Object(Map::new()));
            if !entry.is_object() {
                *entry = Value::Object(Map::new());
            }
            if let Value::Object(inner) = entry {
                insert_path(inner, rest, value);
            }
        }
    }
}

fn fill(pattern: &str, i: Option<usize>) -> String {
    match i {
        Some(i) => pattern.replace("{i}", &i.to_string()),
        None => pattern.to_string(),
    }
}

/// One rule applied at one layer index: the Hugging Face name and its Kiln parts.
#[derive(Debug, Clone)]
struct Instance {
    hf: String,
    parts: Vec<String>,
    transpose: bool,
}

fn transpose2(t: &HostTensor) -> HostTensor {
    if t.shape.len() != 2 {
        return t.clone();
    }
    let (r, c) = (t.shape[0], t.shape[1]);
    let mut data = vec![0.0; t.data.len()];
    for i in 0..r {
        for j in 0..c {
            data[j * r + i] = t.data[i * c + j];
        }
    }
    HostTensor {
        shape: vec![c, r],
        data,
    }
}

fn transposed_shape(shape: &[usize], transpose: bool) -> Vec<usize> {
    let mut s = shape.to_vec();
    if transpose && s.len() == 2 {
        s.swap(0, 1);
    }
    s
}

/// Concatenates along the last axis; every part has the same leading dims (checked by caller).
fn concat_last(parts: &[&HostTensor]) -> HostTensor {
    let lead: usize = parts[0].shape[..parts[0].shape.len() - 1].iter().product();
    let widths: Vec<usize> = parts
        .iter()
        .map(|p| *p.shape.last().unwrap_or(&1))
        .collect();
    let total: usize = widths.iter().sum();
    let mut data = Vec::with_capacity(lead * total);
    for r in 0..lead {
        for (p, w) in parts.iter().zip(&widths) {
            data.extend_from_slice(&p.data[r * w..(r + 1) * w]);
        }
    }
    let mut shape = parts[0].shape.clone();
    if let Some(l) = shape.last_mut() {
        *l = total;
    }
    HostTensor { shape, data }
}

fn split_last(t: &HostTensor, widths: &[usize]) -> Vec<HostTensor> {
    let total: usize = widths.iter().sum();
    let lead = t.data.len() / total.max(1);
    let mut out: Vec<HostTensor> = widths
        .iter()
        .map(|w| {
            let mut shape = t.shape.clone();
            if let Some(l) = shape.last_mut() {
                *l = *w;
            }
            HostTensor {
                shape,
                data: Vec::with_capacity(lead * w),
            }
        })
        .collect();
    for r in 0..lead {
        let mut off = r * total;
        for (o, w) in out.iter_mut().zip(widths) {
            o.data.extend_from_slice(&t.data[off..off + w]);
            off += w;
        }
    }
    out
}

impl Family {
    /// The rule instances that cover `params` (Kiln names), or why some parameter has none.
    fn instances(&self, params: &[String]) -> Result<Vec<Instance>, Vec<MappingError>> {
        let mut found: BTreeMap<(usize, Option<usize>), ()> = BTreeMap::new();
        let mut errors = Vec::new();
        for p in params {
            let hit = self.tensors.iter().enumerate().find_map(|(r, rule)| {
                rule.kiln
                    .iter()
                    .find_map(|k| match_pattern(k, p))
                    .map(|i| (r, i))
            });
            match hit {
                Some(k) => {
                    found.insert(k, ());
                }
                None => errors.push(MappingError::Unmapped {
                    param: p.clone(),
                    family: self.model.clone(),
                }),
            }
        }
        let mut out = Vec::new();
        for (r, i) in found.keys() {
            let rule = &self.tensors[*r];
            let hf = fill(&rule.hf, *i);
            let parts: Vec<String> = rule.kiln.iter().map(|k| fill(k, *i)).collect();
            for part in &parts {
                if !params.contains(part) {
                    errors.push(MappingError::MissingParam {
                        param: part.clone(),
                        tensor: hf.clone(),
                    });
                }
            }
            out.push(Instance {
                hf,
                parts,
                transpose: rule.transpose,
            });
        }
        if errors.is_empty() {
            Ok(out)
        } else {
            Err(errors)
        }
    }

    fn incompatible(&self, problems: Vec<MappingError>) -> MappingError {
        MappingError::Incompatible {
            family: self.model.clone(),
            count: problems.len(),
            problems,
        }
    }

    /// Kiln tensors (parameters, or gradients, which share their layout) under Hugging Face
    /// names. Tied names are left out, as `save_pretrained` leaves them out.
    pub fn to_hf(&self, kiln: &TensorMap) -> Result<TensorMap, MappingError> {
        let names: Vec<String> = kiln.keys().cloned().collect();
        let instances = self.instances(&names).map_err(|e| self.incompatible(e))?;
        let mut out = TensorMap::new();
        let mut problems = Vec::new();
        for inst in instances {
            let parts: Vec<&HostTensor> = inst.parts.iter().filter_map(|p| kiln.get(p)).collect();
            let lead = |t: &HostTensor| t.shape[..t.shape.len().saturating_sub(1)].to_vec();
            if parts
                .iter()
                .any(|p| p.shape.is_empty() || lead(p) != lead(parts[0]))
            {
                problems.push(MappingError::Shape {
                    tensor: inst.hf.clone(),
                    found: Shape(parts.iter().flat_map(|p| p.shape.clone()).collect()),
                    expected: Shape(lead(parts[0])),
                    kiln: inst.parts.join(" + "),
                });
                continue;
            }
            let joined = if parts.len() == 1 {
                parts[0].clone()
            } else {
                concat_last(&parts)
            };
            let t = if inst.transpose {
                transpose2(&joined)
            } else {
                joined
            };
            out.insert(inst.hf, t);
        }
        if problems.is_empty() {
            Ok(out)
        } else {
            Err(self.incompatible(problems))
        }
    }

    /// Hugging Face tensors as the Kiln parameters of shapes `expected`. Every tensor of the file
    /// must be used (tied names excepted) and every parameter found, with the right shape; all
    /// problems are reported at once.
    pub fn from_hf(
        &self,
        hf: &TensorMap,
        expected: &BTreeMap<String, Vec<usize>>,
    ) -> Result<TensorMap, MappingError> {
        let names: Vec<String> = expected.keys().cloned().collect();
        let instances = self.instances(&names).map_err(|e| self.incompatible(e))?;
        let mut problems = Vec::new();
        let mut out = TensorMap::new();
        let mut used: Vec<&str> = Vec::new();
        for inst in &instances {
            let shapes: Vec<&Vec<usize>> = inst.parts.iter().map(|p| &expected[p]).collect();
            let widths: Vec<usize> = shapes.iter().map(|s| *s.last().unwrap_or(&1)).collect();
            let mut kiln_shape = shapes[0].clone();
            if let Some(l) = kiln_shape.last_mut() {
                *l = widths.iter().sum();
            }
            let want = transposed_shape(&kiln_shape, inst.transpose);
            let Some(t) = hf.get(&inst.hf) else {
                problems.push(MappingError::Missing {
                    tensor: inst.hf.clone(),
                    shape: Shape(want),
                    kiln: inst.parts.join(" + "),
                });
                continue;
            };
            used.push(&inst.hf);
            if t.shape != want {
                problems.push(MappingError::Shape {
                    tensor: inst.hf.clone(),
                    found: Shape(t.shape.clone()),
                    expected: Shape(want),
                    kiln: inst.parts.join(" + "),
                });
                continue;
            }
            let k = if inst.transpose {
                transpose2(t)
            } else {
                t.clone()
            };
            if inst.parts.len() == 1 {
                out.insert(inst.parts[0].clone(), k);
            } else {
                for (name, part) in inst.parts.iter().zip(split_last(&k, &widths)) {
                    out.insert(name.clone(), part);
                }
            }
        }
        for (name, t) in hf {
            if !used.contains(&name.as_str()) && !self.tied.contains(name) {
                problems.push(MappingError::Extra {
                    tensor: name.clone(),
                    shape: Shape(t.shape.clone()),
                });
            }
        }
        if problems.is_empty() {
            Ok(out)
        } else {
            Err(self.incompatible(problems))
        }
    }

    /// Checks `model_type` and the fixed keys, and reads the hyperparameters `config.json` sets.
    pub fn hyperparameters(
        &self,
        config: &HfConfig,
    ) -> Result<Vec<(String, HfHyper)>, MappingError> {
        let mut problems = Vec::new();
        match lookup(&config.value, "model_type").and_then(Value::as_str) {
            Some(t) if t == self.model_type => {}
            found => problems.push(MappingError::ModelType {
                found: found.unwrap_or("(absent)").to_string(),
                expected: self.model_type.clone(),
                model: self.model.clone(),
            }),
        }
        for f in &self.fixed {
            match lookup(&config.value, &f.key) {
                None if f.absent_ok => {}
                found => {
                    let ok = found.is_some_and(|v| f.allowed.contains(v));
                    if !ok {
                        problems.push(MappingError::Fixed {
                            key: f.key.clone(),
                            found: found.map_or("absent".to_string(), |v| v.to_string()),
                            expected: f
                                .allowed
                                .iter()
                                .map(|v| {
                                    if v.is_null() {
                                        "absent".to_string()
                                    } else {
                                        v.to_string()
                                    }
                                })
                                .collect::<Vec<_>>()
                                .join(" or "),
                            family: self.model.clone(),
                        });
                    }
                }
            }
        }
        let mut out: Vec<(String, HfHyper)> = Vec::new();
        for k in &self.config {
            if out.iter().any(|(h, _)| *h == k.hparam) {
                continue;
            }
            let Some((key, v)) = k
                .keys
                .iter()
                .find_map(|key| lookup(&config.value, key).map(|v| (key.as_str(), v)))
            else {
                continue;
            };
            let parsed = match k.kind {
                ConfigKind::Int => v
                    .as_u64()
                    .and_then(|n| i64::try_from(n).ok())
                    .map(HfHyper::Int),
                ConfigKind::Float => v.as_f64().map(HfHyper::Float),
                ConfigKind::Str => v.as_str().map(|s| HfHyper::Str(s.to_string())),
            };
            match parsed {
                Some(p) => out.push((k.hparam.to_string(), p)),
                None => problems.push(MappingError::ConfigType {
                    key: key.to_string(),
                    found: v.to_string(),
                    kind: match k.kind {
                        ConfigKind::Int => "an unsigned integer",
                        ConfigKind::Float => "a number",
                        ConfigKind::Str => "a string",
                    },
                }),
            }
        }
        if problems.is_empty() {
            Ok(out)
        } else {
            Err(self.incompatible(problems))
        }
    }

    /// A `config.json` for these hyperparameters (the spec's bound values).
    pub fn config_json(&self, hparams: &[(String, HfHyper)]) -> Value {
        let mut obj = Map::new();
        obj.insert(
            "architectures".to_string(),
            Value::Array(vec![Value::String(self.architecture.to_string())]),
        );
        obj.insert(
            "model_type".to_string(),
            Value::String(self.model_type.to_string()),
        );
        for k in &self.config {
            let Some((_, v)) = hparams.iter().find(|(h, _)| *h == k.hparam) else {
                continue;
            };
            let json = match (k.kind, v) {
                (ConfigKind::Float, HfHyper::Int(n)) => serde_json::json!(*n as f64),
                (_, HfHyper::Int(n)) => serde_json::json!(n),
                (_, HfHyper::Float(x)) => serde_json::json!(x),
                (_, HfHyper::Str(s)) => serde_json::json!(s),
            };
            if let Some(key) = k.keys.first() {
                insert_path(&mut obj, key, json);
            }
        }
        for f in &self.fixed {
            if let Some(v) = f.allowed.first() {
                insert_path(&mut obj, &f.key, v.clone());
            }
        }
        obj.insert("torch_dtype".to_string(), Value::String("float32".into()));
        Value::Object(obj)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(shape: &[usize]) -> HostTensor {
        let n: usize = shape.iter().product();
        HostTensor {
            shape: shape.to_vec(),
            data: (0..n).map(|x| x as f32).collect(),
        }
    }

    #[test]
    fn patterns_match_layer_indices_only() {
        assert_eq!(
            match_pattern("h.{i}.ln_1.weight", "h.12.ln_1.weight"),
            Some(Some(12))
        );
        assert_eq!(match_pattern("h.{i}.ln_1.weight", "h..ln_1.weight"), None);
        assert_eq!(match_pattern("h.{i}.ln_1.weight", "h.x.ln_1.weight"), None);
        assert_eq!(match_pattern("wte", "wte"), Some(None));
        assert_eq!(match_pattern("wte", "wpe"), None);
    }

    #[test]
    fn fused_split_and_transpose_invert_each_other() {
        let mut kiln = TensorMap::new();
        for n in ["q", "k", "v"] {
            kiln.insert(format!("h.0.attn.{n}.weight"), t(&[2, 3]));
        }
        let inst = Instance {
            hf: "c".into(),
            parts: vec![
                "h.0.attn.q.weight".into(),
                "h.0.attn.k.weight".into(),
                "h.0.attn.v.weight".into(),
            ],
            transpose: true,
        };
        let parts: Vec<&HostTensor> = inst.parts.iter().map(|p| &kiln[p]).collect();
        let joined = transpose2(&concat_last(&parts));
        assert_eq!(joined.shape, vec![9, 2]);
        // Row j of the transposed tensor is column j of the concatenation: q's columns first.
        assert_eq!(&joined.data[..2], &[0.0, 3.0]);
        let back = split_last(&transpose2(&joined), &[3, 3, 3]);
        assert_eq!(back[1], kiln["h.0.attn.k.weight"]);
    }
}
