//! `hf` items: how a model's parameters sit in a Hugging Face checkpoint, declared once per family
//! in the spec, next to the model it describes. The runtime generates `kiln import` and
//! `kiln export` from the checked [`HfLayout`]; nothing about a family is written in Rust.
//!
//! ```text
//! hf gpt2_hf for gpt2 {
//!     model_type = "gpt2"
//!     architecture = "GPT2LMHeadModel"
//!     loss = "causal_shifted"
//!     config d = "n_embd"                      # config.json key(s) setting a hyperparameter
//!     require "activation_function" = "gelu_new", none   # values the spec assumes
//!     tied = "lm_head.weight"                  # tensors transformers ties (never in the file)
//!     tensor "transformer.h.{i}.attn.c_attn.weight" = "h.{i}.attn.q.weight", "h.{i}.attn.k.weight", "h.{i}.attn.v.weight"
//!     tensor "model.layers.{i}.self_attn.q_proj.weight" = transpose("layers.{i}.self_attn.q.weight")
//! }
//! ```
//!
//! Checking has two halves: the entries' own form ([`layout`]), and, against the target model
//! instantiated with its defaults ([`check_hf`]), that every parameter has exactly one tensor and
//! every named parameter exists.

use kiln_grammar::ast::{self, ExprKind, HfSubject, Item};

use super::diag::{did_you_mean, FileId, Loc, SemaDiagnostic};
use super::{Request, Workspace};
use crate::ir::Op;

/// Which loss `transformers` computes from `labels`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HfLoss {
    /// Decoder-only: loss of `logits[:, :-1]` against `labels[:, 1:]`.
    CausalShifted,
    /// Encoder-decoder: loss of `logits` against `labels`, no shift.
    Seq2Seq,
}

/// A literal a `require` entry allows; `None` allows the key to be absent or null.
#[derive(Debug, Clone, PartialEq)]
pub enum HfLiteral {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    None,
}

/// `config HPARAM = "key", "other.spelling"`: the first present key sets it; export writes the first.
#[derive(Debug, Clone, PartialEq)]
pub struct HfConfigKey {
    pub hparam: String,
    pub keys: Vec<String>,
}

/// `require "key" = v1, v2`: the values (first one exported) the spec assumes.
#[derive(Debug, Clone, PartialEq)]
pub struct HfRequire {
    pub key: String,
    pub allowed: Vec<HfLiteral>,
}

/// `tensor "hf.name.{i}" = "kiln.{i}.a", "kiln.{i}.b"` (parts concatenated along Kiln's last axis),
/// or `= transpose(...)` when the file stores the transpose of Kiln's `[in, out]` layout.
#[derive(Debug, Clone, PartialEq)]
pub struct HfTensor {
    pub hf: String,
    pub parts: Vec<String>,
    pub transpose: bool,
}

/// A checked `hf` item.
#[derive(Debug, Clone, PartialEq)]
pub struct HfLayout {
    pub name: String,
    /// The model block it describes.
    pub model: String,
    pub model_type: String,
    pub architecture: String,
    pub loss: HfLoss,
    pub config: Vec<HfConfigKey>,
    pub require: Vec<HfRequire>,
    pub tied: Vec<String>,
    pub tensors: Vec<HfTensor>,
}

const ENTRIES: &[&str] = &[
    "model_type",
    "architecture",
    "loss",
    "config",
    "require",
    "tied",
    "tensor",
];

/// Matches `name` against a pattern with at most one `{i}`; the index (`None` without one).
pub fn match_pattern(pattern: &str, name: &str) -> Option<Option<usize>> {
    match pattern.split_once("{i}") {
        None => (pattern == name).then_some(None),
        Some((pre, post)) => {
            let mid = name.strip_prefix(pre)?.strip_suffix(post)?;
            if mid.is_empty() || mid.len() > 9 || !mid.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            mid.parse().ok().map(Some)
        }
    }
}

struct Ctx<'a> {
    ws: &'a Workspace,
    file: FileId,
    out: Vec<SemaDiagnostic>,
}

impl Ctx<'_> {
    fn err(&mut self, code: &'static str, span: kiln_grammar::ast::Span, msg: String) {
        let d = self.ws.simple_diag(
            code,
            Loc {
                file: self.file,
                span,
            },
            msg,
        );
        self.out.push(d);
    }

    fn err_help(
        &mut self,
        code: &'static str,
        span: kiln_grammar::ast::Span,
        msg: String,
        help: String,
    ) {
        self.err(code, span, msg);
        if let Some(d) = self.out.last_mut() {
            d.help = Some(help);
        }
    }

    fn strings(&mut self, e: &ast::HfEntry) -> Option<Vec<String>> {
        let mut out = Vec::new();
        for v in &e.values {
            match &v.kind {
                ExprKind::Str(s) => out.push(s.clone()),
                _ => {
                    self.err(
                        "sema::hf_value",
                        v.span,
                        format!("`{}` takes quoted names", e.key.name),
                    );
                    return None;
                }
            }
        }
        Some(out)
    }

    fn one_string(&mut self, e: &ast::HfEntry) -> Option<String> {
        let v = self.strings(e)?;
        if v.len() != 1 {
            self.err(
                "sema::hf_value",
                e.span,
                format!("`{}` takes one quoted value", e.key.name),
            );
            return None;
        }
        v.into_iter().next()
    }

    fn literal(&mut self, v: &ast::Expr) -> Option<HfLiteral> {
        Some(match &v.kind {
            ExprKind::Str(s) => HfLiteral::Str(s.clone()),
            ExprKind::Int(n) => HfLiteral::Int(*n),
            ExprKind::Float(x, _) => HfLiteral::Float(*x),
            ExprKind::Bool(b) => HfLiteral::Bool(*b),
            ExprKind::None => HfLiteral::None,
            _ => {
                self.err(
                    "sema::hf_value",
                    v.span,
                    "`require` takes literals: strings, numbers, `true`, `false`, `none`"
                        .to_string(),
                );
                return None;
            }
        })
    }
}

fn subject_str(e: &ast::HfEntry) -> Option<&str> {
    match &e.subject {
        Some(HfSubject::Str(s, _)) => Some(s),
        _ => None,
    }
}

/// The layout an `hf` item declares, with diagnostics for malformed entries (the layout is
/// `None` when any entry is unusable).
pub fn layout(
    ws: &Workspace,
    file: FileId,
    def: &ast::HfDef,
) -> (Option<HfLayout>, Vec<SemaDiagnostic>) {
    let mut cx = Ctx {
        ws,
        file,
        out: Vec::new(),
    };
    let model = match ws.lookup_item(&def.target.name).map(|i| ws.item(i)) {
        Some(Item::Block(b)) if b.kind == ast::BlockKind::Model => Some(b),
        _ => {
            cx.err_help(
                "sema::hf_target",
                def.target.span,
                format!("`{}` is not a model", def.target.name),
                "an `hf` layout is declared for a `model` block (not a config)".to_string(),
            );
            None
        }
    };
    let mut model_type = None;
    let mut architecture = None;
    let mut loss = None;
    let mut config: Vec<HfConfigKey> = Vec::new();
    let mut require = Vec::new();
    let mut tied = Vec::new();
    let mut tensors: Vec<HfTensor> = Vec::new();
    for e in &def.entries {
        let key = e.key.name.as_str();
        if !ENTRIES.contains(&key) {
            let mut help = format!("entries: {}", ENTRIES.join(", "));
            if let Some(s) = did_you_mean(key, ENTRIES.iter().copied()) {
                help = format!("did you mean `{s}`?");
            }
            cx.err_help(
                "sema::hf_entry",
                e.key.span,
                format!("unknown `hf` entry `{key}`"),
                help,
            );
            continue;
        }
        let wants = match key {
            "config" => "a hyperparameter name",
            "require" | "tensor" => "a quoted name",
            _ => "no subject",
        };
        let subject_ok = matches!(
            (key, &e.subject),
            ("config", Some(HfSubject::Name(_)))
                | ("require" | "tensor", Some(HfSubject::Str(..)))
                | ("model_type" | "architecture" | "loss" | "tied", None)
        );
        if !subject_ok {
            cx.err(
                "sema::hf_entry",
                e.span,
                format!("`{key}` takes {wants} before `=`"),
            );
            continue;
        }
        match key {
            "model_type" => model_type = cx.one_string(e),
            "architecture" => architecture = cx.one_string(e),
            "loss" => {
                loss = match cx.one_string(e).as_deref() {
                    Some("causal_shifted") => Some(HfLoss::CausalShifted),
                    Some("seq2seq") => Some(HfLoss::Seq2Seq),
                    Some(other) => {
                        cx.err(
                            "sema::hf_value",
                            e.span,
                            format!("unknown loss `{other}`: `causal_shifted` or `seq2seq`"),
                        );
                        None
                    }
                    None => None,
                }
            }
            "config" => {
                let Some(HfSubject::Name(h)) = &e.subject else {
                    continue;
                };
                if let Some(m) = model {
                    if !m.params.iter().any(|p| p.name.name == h.name) {
                        let mut help = None;
                        if let Some(s) =
                            did_you_mean(&h.name, m.params.iter().map(|p| p.name.name.as_str()))
                        {
                            help = Some(format!("did you mean `{s}`?"));
                        }
                        cx.err(
                            "sema::hf_hparam",
                            h.span,
                            format!("model `{}` has no hyperparameter `{}`", m.name.name, h.name),
                        );
                        if let Some(d) = cx.out.last_mut() {
                            d.help = help;
                        }
                        continue;
                    }
                }
                if let Some(keys) = cx.strings(e) {
                    config.push(HfConfigKey {
                        hparam: h.name.clone(),
                        keys,
                    });
                }
            }
            "require" => {
                let allowed: Option<Vec<HfLiteral>> =
                    e.values.iter().map(|v| cx.literal(v)).collect();
                if let (Some(allowed), Some(k)) = (allowed, subject_str(e)) {
                    require.push(HfRequire {
                        key: k.to_string(),
                        allowed,
                    });
                }
            }
            "tied" => {
                if let Some(v) = cx.strings(e) {
                    tied.extend(v);
                }
            }
            "tensor" => {
                let Some(hf) = subject_str(e) else { continue };
                let (parts, transpose) = match e.values.as_slice() {
                    [ast::Expr {
                        kind: ExprKind::Call { callee, args, .. },
                        span,
                    }] => {
                        if callee.name != "transpose" || args.iter().any(|a| a.name.is_some()) {
                            cx.err(
                                "sema::hf_value",
                                *span,
                                "a tensor is quoted parameter names or `transpose(...)` of them"
                                    .to_string(),
                            );
                            continue;
                        }
                        let mut parts = Vec::new();
                        for a in args {
                            match &a.value.kind {
                                ExprKind::Str(s) => parts.push(s.clone()),
                                _ => cx.err(
                                    "sema::hf_value",
                                    a.value.span,
                                    "`transpose` takes quoted parameter names".to_string(),
                                ),
                            }
                        }
                        if parts.len() != args.len() || parts.is_empty() {
                            continue;
                        }
                        (parts, true)
                    }
                    _ => match cx.strings(e) {
                        Some(p) => (p, false),
                        None => continue,
                    },
                };
                if tensors.iter().any(|t| t.hf == hf) {
                    cx.err(
                        "sema::hf_duplicate",
                        e.span,
                        format!("tensor `{hf}` is declared twice"),
                    );
                    continue;
                }
                let holes = |s: &str| s.matches("{i}").count();
                if holes(hf) > 1 || parts.iter().any(|p| holes(p) != holes(hf)) {
                    cx.err(
                        "sema::hf_value",
                        e.span,
                        "`{i}` must appear at most once, and in the tensor and every part alike"
                            .to_string(),
                    );
                    continue;
                }
                tensors.push(HfTensor {
                    hf: hf.to_string(),
                    parts,
                    transpose,
                });
            }
            _ => {}
        }
    }
    let mut missing = |what: &str, present: bool| {
        if !present {
            let d = ws.simple_diag(
                "sema::hf_entry",
                Loc {
                    file,
                    span: def.name.span,
                },
                format!("`hf {}` has no `{what}` entry", def.name.name),
            );
            cx.out.push(d);
        }
    };
    missing("model_type", model_type.is_some());
    missing("architecture", architecture.is_some());
    missing("loss", loss.is_some());
    let ok = cx.out.is_empty() && model.is_some();
    let layout = match (ok, model_type, architecture, loss) {
        (true, Some(model_type), Some(architecture), Some(loss)) => Some(HfLayout {
            name: def.name.name.clone(),
            model: def.target.name.clone(),
            model_type,
            architecture,
            loss,
            config,
            require,
            tied,
            tensors,
        }),
        _ => None,
    };
    (layout, cx.out)
}

/// Checks an `hf` item, and its tensors against the parameters of its model (instantiated with
/// the model's defaults): every parameter in exactly one tensor, every named part a parameter.
pub fn check_hf(ws: &Workspace, file: FileId, def: &ast::HfDef) -> Vec<SemaDiagnostic> {
    let (layout, mut out) = layout(ws, file, def);
    let Some(layout) = layout else {
        return out;
    };
    let Ok(inst) = ws.instantiate(&Request {
        config: layout.model.clone(),
        ..Default::default()
    }) else {
        // The model's own errors are reported where it is checked.
        return out;
    };
    let g = &inst.graph;
    let params: Vec<String> = g
        .params()
        .into_iter()
        .filter_map(|p| match g.node(p).op() {
            Op::Param { name, .. } => Some(name.clone()),
            _ => None,
        })
        .collect();
    let at = |span| Loc { file, span };
    // One report per parameter pattern, not one per layer.
    let mut reported: Vec<String> = Vec::new();
    for p in &params {
        let pattern: String = p
            .split('.')
            .map(|seg| {
                if !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) {
                    "{i}"
                } else {
                    seg
                }
            })
            .collect::<Vec<_>>()
            .join(".");
        let hits = layout
            .tensors
            .iter()
            .flat_map(|t| t.parts.iter())
            .filter(|part| match_pattern(part, p).is_some())
            .count();
        if hits != 1 && !reported.contains(&pattern) {
            reported.push(pattern);
            let mut d = ws.simple_diag(
                "sema::hf_param",
                at(def.name.span),
                if hits == 0 {
                    format!(
                        "parameter `{p}` of model `{}` is in no `tensor` of `hf {}`",
                        layout.model, layout.name
                    )
                } else {
                    format!(
                        "parameter `{p}` of model `{}` is in {hits} tensors of `hf {}`",
                        layout.model, layout.name
                    )
                },
            );
            d.help = Some("every parameter must have exactly one place in the file".to_string());
            out.push(d);
        }
    }
    for (t, e) in layout
        .tensors
        .iter()
        .zip(def.entries.iter().filter(|e| e.key.name == "tensor"))
    {
        for part in &t.parts {
            if !params.iter().any(|p| match_pattern(part, p).is_some()) {
                let mut d = ws.simple_diag(
                    "sema::hf_param",
                    at(e.span),
                    format!("model `{}` has no parameter `{part}`", layout.model),
                );
                d.help = did_you_mean(part, params.iter().map(String::as_str))
                    .map(|s| format!("did you mean `{s}`?"));
                out.push(d);
            }
        }
    }
    out
}

impl Workspace {
    /// The checked `hf` layout declared for model block `model`, if any (the first one).
    pub fn hf_layout(&self, model: &str) -> Option<Result<HfLayout, Vec<SemaDiagnostic>>> {
        for (f, file) in self.asts.iter().enumerate() {
            for item in &file.items {
                if let Item::Hf(h) = item {
                    if h.target.name == model {
                        let (layout, ds) = layout(self, f, h);
                        return Some(match layout {
                            Some(l) if ds.iter().all(|d| !d.is_error()) => Ok(l),
                            _ => Err(ds),
                        });
                    }
                }
            }
        }
        None
    }
}
