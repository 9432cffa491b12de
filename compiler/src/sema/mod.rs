//! Semantic analysis: from parsed `.kiln` files to a checked, lowered model.
//!
//! - `Workspace` holds the source files (the embedded stdlib plus the user's), their ASTs and the
//!   global item table; it turns every error into a `SemaDiagnostic` against the right file.
//! - `resolve` is the static pass: unknown names ("did you mean"), call arity and argument names,
//!   recursion, unused values (warnings). It sees every item, instantiated or not.
//! - `eval` instantiates a config's model (and optionally an objective over it) with compile-time
//!   hyperparameters and symbolic run dims, checking shapes, dtypes and divisibility while it emits
//!   primitive ops into the graph (`lower`).
//! - `plan` checks parallelism plans against the config they target.
//!
//! Architecture invariant: no input makes any of this panic or hang (`eval::MAX_*` bound the work).

pub mod builtins;
pub mod diag;
pub mod eval;
pub mod hf;
pub mod lower;
pub mod plancheck;
pub mod resolve;
pub mod value;

use std::collections::BTreeMap;
use std::sync::Arc;

use kiln_grammar::ast::{self, BlockKind, Item};
use miette::Severity;

pub use diag::{render, FileId, Loc, SemaDiagnostic, SourceFile};
pub use eval::DataTransform;
pub use value::{Mask, Value};

use crate::ir::{Graph, Op, ValueId};
use diag::Label;
use eval::{Eval, EvalError};

/// The stdlib, embedded so that the binary works from any directory. A user file named
/// `.../stdlib/NAME.kiln` replaces the embedded module of that name (to edit and check the stdlib).
pub const STDLIB: &[(&str, &str)] = &[
    ("stdlib/nn.kiln", include_str!("../../../stdlib/nn.kiln")),
    (
        "stdlib/attention.kiln",
        include_str!("../../../stdlib/attention.kiln"),
    ),
    (
        "stdlib/objectives.kiln",
        include_str!("../../../stdlib/objectives.kiln"),
    ),
];

pub struct Workspace {
    pub files: Vec<SourceFile>,
    pub asts: Vec<ast::File>,
    items: BTreeMap<String, (FileId, usize)>,
    /// Load-time diagnostics: syntax errors and duplicate items.
    pub load_diagnostics: Vec<SemaDiagnostic>,
}

/// What to instantiate.
#[derive(Clone, Debug, Default)]
pub struct Request {
    /// A named config, or a model name (then with its defaults).
    pub config: String,
    /// `--set k=v` hyperparameter overrides.
    pub overrides: Vec<(String, Value)>,
    /// An objective and its arguments; without one, the model alone (its output is `logits`).
    pub objective: Option<(String, Vec<(String, Value)>)>,
    /// Compile a training step (dropout active) rather than inference.
    pub training: bool,
}

/// A checked, lowered model (+ objective).
pub struct Instance {
    pub graph: Graph,
    pub config: String,
    pub model: String,
    /// Every hyperparameter of the model, in declaration order, as finally bound.
    pub hparams: Vec<(String, Value)>,
    pub loss: Option<ValueId>,
    pub logits: Option<ValueId>,
    pub data: Option<DataTransform>,
}

impl Default for Workspace {
    fn default() -> Self {
        Self::new()
    }
}

impl Workspace {
    /// A workspace holding the embedded stdlib.
    pub fn new() -> Self {
        let mut ws = Workspace {
            files: Vec::new(),
            asts: Vec::new(),
            items: BTreeMap::new(),
            load_diagnostics: Vec::new(),
        };
        for (name, text) in STDLIB {
            ws.push_file(name.to_string(), Arc::from(*text), true);
        }
        ws.rebuild_items();
        ws
    }

    /// Add a user file (parsed now; syntax errors land in `load_diagnostics`).
    pub fn add_file(&mut self, name: &str, text: &str) -> FileId {
        let norm = name.replace('\\', "/");
        for (i, (stdname, _)) in STDLIB.iter().enumerate() {
            let base = stdname.trim_start_matches("stdlib/");
            if norm.ends_with(&format!("stdlib/{base}")) {
                // Replace the embedded module with the user's copy.
                self.files[i] = SourceFile {
                    name: name.to_string(),
                    text: Arc::from(text),
                    is_stdlib: true,
                };
                self.asts[i] = self.parse(i);
                self.rebuild_items();
                return i;
            }
        }
        let id = self.push_file(name.to_string(), Arc::from(text), false);
        self.rebuild_items();
        id
    }

    fn push_file(&mut self, name: String, text: Arc<str>, is_stdlib: bool) -> FileId {
        self.files.push(SourceFile {
            name,
            text,
            is_stdlib,
        });
        let id = self.files.len() - 1;
        let ast = self.parse(id);
        self.asts.push(ast);
        id
    }

    fn parse(&mut self, id: FileId) -> ast::File {
        let text = self.files[id].text.clone();
        match kiln_grammar::parse(&text) {
            Ok(f) => f,
            Err(errs) => {
                for e in errs {
                    self.load_diagnostics.push(syntax_diag(&self.files[id], &e));
                }
                ast::File::default()
            }
        }
    }

    fn rebuild_items(&mut self) {
        self.items.clear();
        self.load_diagnostics
            .retain(|d| d.code != "sema::duplicate_item" && d.code != "sema::reserved_name");
        for (f, file) in self.asts.iter().enumerate() {
            for (i, item) in file.items.iter().enumerate() {
                let name = &item.name().name;
                if name == "model" {
                    let d = self.simple_diag(
                        "sema::reserved_name",
                        Loc {
                            file: f,
                            span: item.name().span,
                        },
                        "`model` is reserved: objectives call the trained model by that name"
                            .into(),
                    );
                    self.load_diagnostics.push(d);
                    continue;
                }
                if let Some(&(pf, pi)) = self.items.get(name) {
                    let prev = self.asts[pf].items[pi].name().span;
                    let mut d = self.simple_diag(
                        "sema::duplicate_item",
                        Loc {
                            file: f,
                            span: item.name().span,
                        },
                        format!("`{name}` is defined twice"),
                    );
                    d.labels[0].text = "defined again here".into();
                    if pf == f {
                        d.labels.push(Label {
                            span: prev,
                            text: "first defined here".into(),
                        });
                    } else {
                        let mut r = self.simple_diag(
                            "sema::duplicate_item",
                            Loc {
                                file: pf,
                                span: prev,
                            },
                            "first defined here".into(),
                        );
                        r.severity = Severity::Advice;
                        d.related.push(r);
                    }
                    self.load_diagnostics.push(d);
                    continue;
                }
                self.items.insert(name.clone(), (f, i));
            }
        }
    }

    pub fn lookup_item(&self, name: &str) -> Option<(FileId, usize)> {
        self.items.get(name).copied()
    }

    pub fn item(&self, at: (FileId, usize)) -> &Item {
        &self.asts[at.0].items[at.1]
    }

    pub fn item_names(&self) -> impl Iterator<Item = &str> {
        self.items.keys().map(|s| s.as_str())
    }

    /// Named configs of a file, in source order.
    pub fn configs_of(&self, file: FileId) -> Vec<String> {
        self.asts[file]
            .items
            .iter()
            .filter_map(|i| match i {
                Item::Config(c) => Some(c.name.name.clone()),
                _ => None,
            })
            .collect()
    }

    /// Every config name known (all files).
    pub fn all_configs(&self) -> Vec<String> {
        (0..self.files.len())
            .flat_map(|f| self.configs_of(f))
            .collect()
    }

    // ----- diagnostics --------------------------------------------------------------------------

    pub fn simple_diag(&self, code: &'static str, loc: Loc, message: String) -> SemaDiagnostic {
        let f = &self.files[loc.file];
        SemaDiagnostic {
            code,
            message,
            severity: Severity::Error,
            file_name: f.name.clone(),
            source: f.text.clone(),
            labels: vec![Label {
                span: loc.span,
                text: String::new(),
            }],
            help: None,
            related: Vec::new(),
        }
    }

    /// Render an evaluation error against the files: primary label in the user's file (the
    /// innermost call from user code when the error arises in the stdlib), related diagnostics for
    /// the stdlib place and any notes in other files.
    pub fn eval_diag(&self, e: &EvalError) -> SemaDiagnostic {
        let in_stdlib = self.files[e.loc.file].is_stdlib;
        let user_frame = if in_stdlib {
            e.stack
                .iter()
                .rev()
                .find(|f| !self.files[f.call.file].is_stdlib)
        } else {
            None
        };
        let primary_loc = user_frame.map(|f| f.call).unwrap_or(e.loc);
        let mut d = self.simple_diag(e.code, primary_loc, e.message.clone());
        d.help = e.help.clone();
        d.labels[0].text = match user_frame {
            Some(f) => format!("in this call to `{}`", f.callee),
            None => e.label.clone(),
        };
        if user_frame.is_some() {
            let mut r = self.simple_diag(
                e.code,
                e.loc,
                format!(
                    "the error arises here, in `{}`",
                    self.files[e.loc.file].name
                ),
            );
            r.labels[0].text = if e.label.is_empty() {
                "here".into()
            } else {
                e.label.clone()
            };
            r.severity = Severity::Advice;
            d.related.push(r);
        }
        for (loc, text) in &e.notes {
            if loc.file == primary_loc.file && *loc != primary_loc {
                d.labels.push(Label {
                    span: loc.span,
                    text: text.clone(),
                });
            } else if *loc != primary_loc {
                let mut r = self.simple_diag(e.code, *loc, text.clone());
                r.labels[0].text = text.clone();
                r.severity = Severity::Advice;
                d.related.push(r);
            }
        }
        d
    }

    // ----- configs and instantiation --------------------------------------------------------------

    /// Resolve a config (or model) name to its model item and the hyperparameter arguments, base
    /// configs first. Each argument keeps its expression's location.
    fn config_chain(
        &self,
        name: &str,
        at: Option<Loc>,
    ) -> Result<((FileId, usize), Vec<(String, Loc, ast::Expr)>), SemaDiagnostic> {
        let mut chain = Vec::new();
        let mut cur = name.to_string();
        let mut seen = Vec::new();
        loop {
            let Some(it) = self.lookup_item(&cur) else {
                let mut cands: Vec<&str> = self.item_names().collect();
                cands.sort();
                let msg = format!("unknown config or model `{cur}`");
                let mut d = match at {
                    Some(l) => self.simple_diag("sema::unknown_config", l, msg),
                    None => SemaDiagnostic {
                        code: "sema::unknown_config",
                        message: msg,
                        severity: Severity::Error,
                        file_name: String::new(),
                        source: Arc::from(""),
                        labels: vec![],
                        help: None,
                        related: vec![],
                    },
                };
                let configs = self.all_configs();
                d.help = Some(
                    match diag::did_you_mean(&cur, configs.iter().map(|s| s.as_str()).chain(cands))
                    {
                        Some(s) => format!("did you mean `{s}`?"),
                        None => format!("configs: {}", configs.join(", ")),
                    },
                );
                return Err(d);
            };
            if seen.contains(&it) {
                return Err(self.simple_diag(
                    "sema::config_cycle",
                    Loc {
                        file: it.0,
                        span: self.item(it).name().span,
                    },
                    format!("config `{cur}` is based on itself"),
                ));
            }
            seen.push(it);
            match self.item(it) {
                Item::Config(c) => {
                    let args: Vec<_> = c
                        .args
                        .iter()
                        .rev()
                        .map(|a| {
                            let key = a.name.as_ref().map(|n| n.name.clone()).unwrap_or_default();
                            (
                                key,
                                Loc {
                                    file: it.0,
                                    span: a.span,
                                },
                                a.value.clone(),
                            )
                        })
                        .collect();
                    for a in &c.args {
                        if a.name.is_none() {
                            return Err(self.simple_diag(
                                "sema::positional_config",
                                Loc {
                                    file: it.0,
                                    span: a.span,
                                },
                                "config arguments are named (`d = 1024`)".into(),
                            ));
                        }
                    }
                    chain.extend(args);
                    cur = c.base.name.clone();
                    if chain.len() > 10_000 {
                        return Err(self.simple_diag(
                            "sema::config_cycle",
                            Loc {
                                file: it.0,
                                span: c.span,
                            },
                            "config chain too long".into(),
                        ));
                    }
                }
                Item::Block(b) if b.kind == BlockKind::Model => {
                    chain.reverse();
                    return Ok((it, chain));
                }
                other => {
                    return Err(self.simple_diag(
                        "sema::not_a_model",
                        Loc {
                            file: it.0,
                            span: other.name().span,
                        },
                        format!("`{cur}` is not a model or config"),
                    ))
                }
            }
        }
    }

    /// Instantiate a config's model (and objective): check it and lower it to the graph.
    pub fn instantiate(&self, req: &Request) -> Result<Instance, Vec<SemaDiagnostic>> {
        let (model_item, args) = self.config_chain(&req.config, None).map_err(|d| vec![d])?;
        let Item::Block(model_def) = self.item(model_item) else {
            return Err(vec![]);
        };
        let mut ev = Eval::new(self, req.training);
        // Evaluate the config arguments (constants; base configs first, later ones win).
        let mut hparams: Vec<(String, Value)> = Vec::new();
        for (k, loc, e) in &args {
            if !model_def.params.iter().any(|p| &p.name.name == k) {
                let mut d = self.simple_diag(
                    "sema::unknown_hparam",
                    *loc,
                    format!(
                        "model `{}` has no hyperparameter `{k}`",
                        model_def.name.name
                    ),
                );
                d.help =
                    diag::did_you_mean(k, model_def.params.iter().map(|p| p.name.name.as_str()))
                        .map(|s| format!("did you mean `{s}`?"));
                return Err(vec![d]);
            }
            let mut env = eval::Env::empty();
            let v = ev
                .eval(loc.file, e, &mut env)
                .map_err(|e| vec![self.eval_diag(&e)])?;
            hparams.retain(|(n, _)| n != k);
            hparams.push((k.clone(), v));
        }
        for (k, v) in &req.overrides {
            if !model_def.params.iter().any(|p| &p.name.name == k) {
                let mut d = self.simple_diag(
                    "sema::unknown_hparam",
                    Loc {
                        file: model_item.0,
                        span: model_def.name.span,
                    },
                    format!(
                        "`--set {k}=...`: model `{}` has no hyperparameter `{k}`",
                        model_def.name.name
                    ),
                );
                d.help =
                    diag::did_you_mean(k, model_def.params.iter().map(|p| p.name.name.as_str()))
                        .map(|s| format!("did you mean `{s}`?"));
                return Err(vec![d]);
            }
            hparams.retain(|(n, _)| n != k);
            hparams.push((k.clone(), v.clone()));
        }
        let at = Loc {
            file: model_item.0,
            span: model_def.name.span,
        };
        let (loss, logits) = match &req.objective {
            None => {
                let out = ev
                    .run_model_root(model_item, &hparams, at)
                    .map_err(|e| vec![self.eval_diag(&e)])?;
                match out {
                    Value::Tensor(t) => (None, Some(t)),
                    other => {
                        return Err(vec![self.simple_diag(
                            "sema::model_output",
                            at,
                            format!(
                                "model `{}` must return a tensor, returns {}",
                                model_def.name.name,
                                other.kind()
                            ),
                        )])
                    }
                }
            }
            Some((obj, oargs)) => {
                let Some(oi) = self.lookup_item(obj).filter(
                    |i| matches!(self.item(*i), Item::Block(b) if b.kind == BlockKind::Objective),
                ) else {
                    let objs: Vec<&str> = self
                        .items
                        .iter()
                        .filter(|(_, i)| matches!(self.item(**i), Item::Block(b) if b.kind == BlockKind::Objective))
                        .map(|(n, _)| n.as_str())
                        .collect();
                    let mut d = self.simple_diag(
                        "sema::unknown_objective",
                        at,
                        format!("unknown objective `{obj}`"),
                    );
                    d.labels.clear();
                    d.help = Some(match diag::did_you_mean(obj, objs.iter().copied()) {
                        Some(s) => format!("did you mean `{s}`?"),
                        None => format!("objectives: {}", objs.join(", ")),
                    });
                    return Err(vec![d]);
                };
                ev.model = Some(eval::ModelBinding {
                    item: model_item,
                    hparams: hparams.clone(),
                });
                let oat = Loc {
                    file: oi.0,
                    span: self.item(oi).name().span,
                };
                let out = ev
                    .run_objective(oi, oargs, oat)
                    .map_err(|e| vec![self.eval_diag(&e)])?;
                let loss = match out {
                    Value::Tensor(t) if ev.lower.graph.ty(t).shape.is_empty() => t,
                    other => {
                        let what = match &other {
                            Value::Tensor(t) => ev.lower.type_str(*t),
                            v => v.kind().to_string(),
                        };
                        return Err(vec![self.simple_diag(
                            "sema::loss_not_scalar",
                            oat,
                            format!("objective `{obj}` must return a scalar loss, returns {what}"),
                        )]);
                    }
                };
                (Some(loss), ev.logits)
            }
        };
        // Bound hyperparameters, in declaration order (defaults included), for reports.
        let final_hparams = self.bound_hparams(model_def, &hparams, &mut ev, model_item.0)?;
        let data = ev.data.take();
        let mut graph = std::mem::take(&mut ev.lower.graph);
        if let Some(l) = loss {
            graph
                .add_output("loss", l)
                .map_err(|e| vec![self.simple_diag("sema::internal", at, e.to_string())])?;
        }
        if let Some(l) = logits {
            graph
                .add_output("logits", l)
                .map_err(|e| vec![self.simple_diag("sema::internal", at, e.to_string())])?;
        }
        Ok(Instance {
            graph,
            config: req.config.clone(),
            model: model_def.name.name.clone(),
            hparams: final_hparams,
            loss,
            logits,
            data,
        })
    }

    fn bound_hparams(
        &self,
        def: &ast::BlockDef,
        given: &[(String, Value)],
        ev: &mut Eval,
        file: FileId,
    ) -> Result<Vec<(String, Value)>, Vec<SemaDiagnostic>> {
        let mut env = eval::Env::empty();
        let mut out = Vec::new();
        for p in &def.params {
            let v = match given.iter().find(|(k, _)| *k == p.name.name) {
                Some((_, v)) => v.clone(),
                None => match &p.default {
                    Some(e) => ev
                        .eval(file, e, &mut env)
                        .map_err(|e| vec![self.eval_diag(&e)])?,
                    None => Value::None,
                },
            };
            env.vars.insert(p.name.name.clone(), v.clone());
            out.push((p.name.name.clone(), v));
        }
        Ok(out)
    }

    // ----- checking ---------------------------------------------------------------------------

    /// Check user files: syntax, the static resolve pass, then instantiate every config (and each
    /// objective of the file over its first config) and check every plan.
    pub fn check(&self, user_files: &[FileId]) -> Vec<SemaDiagnostic> {
        let mut out: Vec<SemaDiagnostic> = self
            .load_diagnostics
            .iter()
            .filter(|d| {
                user_files
                    .iter()
                    .any(|f| self.files[*f].name == d.file_name)
            })
            .cloned()
            .collect();
        // Errors in the embedded stdlib (when not replaced by a user copy) are the project's bug;
        // still report them so that nothing is silently skipped.
        for d in &self.load_diagnostics {
            if !out
                .iter()
                .any(|o| o.message == d.message && o.file_name == d.file_name)
                && !user_files
                    .iter()
                    .any(|f| self.files[*f].name == d.file_name)
            {
                out.push(d.clone());
            }
        }
        let mut resolve_errors = false;
        for &f in user_files {
            let ds = resolve::resolve_file(self, f);
            resolve_errors |= ds.iter().any(|d| d.is_error());
            out.extend(ds);
        }
        if resolve_errors || out.iter().any(|d| d.is_error()) {
            return out;
        }
        for &f in user_files {
            let configs = self.configs_of(f);
            for c in &configs {
                if let Err(ds) = self.instantiate(&Request {
                    config: c.clone(),
                    training: true,
                    ..Default::default()
                }) {
                    out.extend(ds);
                }
            }
            for item in &self.asts[f].items {
                match item {
                    // A model without configs is checked with its defaults.
                    Item::Block(b) if b.kind == BlockKind::Model => {
                        let has_config = configs.iter().any(|c| {
                            self.config_chain(c, None)
                                .map(|(m, _)| self.item(m).name().name == b.name.name)
                                .unwrap_or(false)
                        });
                        if !has_config {
                            if let Err(ds) = self.instantiate(&Request {
                                config: b.name.name.clone(),
                                training: true,
                                ..Default::default()
                            }) {
                                out.extend(ds);
                            }
                        }
                    }
                    Item::Block(b) if b.kind == BlockKind::Objective => {
                        if let Some(c) = configs.first() {
                            let req = Request {
                                config: c.clone(),
                                objective: Some((b.name.name.clone(), vec![])),
                                training: true,
                                ..Default::default()
                            };
                            if let Err(ds) = self.instantiate(&req) {
                                out.extend(ds);
                            }
                        }
                    }
                    Item::Plan(p) => out.extend(plancheck::check_plan(self, f, p)),
                    Item::Hf(h) => out.extend(hf::check_hf(self, f, h)),
                    _ => {}
                }
            }
        }
        dedup(out)
    }

    /// Hyperparameters of a config as bound (for plans and reports), without lowering the model.
    pub fn config_hparams(
        &self,
        config: &str,
        at: Option<Loc>,
    ) -> Result<Vec<(String, Value)>, SemaDiagnostic> {
        let (model_item, args) = self.config_chain(config, at)?;
        let Item::Block(def) = self.item(model_item) else {
            unreachable!("config_chain returns models")
        };
        let mut ev = Eval::new(self, false);
        let mut given = Vec::new();
        for (k, loc, e) in &args {
            let mut env = eval::Env::empty();
            let v = ev
                .eval(loc.file, e, &mut env)
                .map_err(|e| self.eval_diag(&e))?;
            given.retain(|(n, _): &(String, Value)| n != k);
            given.push((k.clone(), v));
        }
        self.bound_hparams(def, &given, &mut ev, model_item.0)
            .map_err(|mut v| v.remove(0))
    }
}

fn dedup(ds: Vec<SemaDiagnostic>) -> Vec<SemaDiagnostic> {
    let mut out: Vec<SemaDiagnostic> = Vec::new();
    for d in ds {
        let dup = out.iter().any(|o| {
            o.code == d.code
                && o.message == d.message
                && o.file_name == d.file_name
                && o.labels.first().map(|l| l.span) == d.labels.first().map(|l| l.span)
        });
        if !dup {
            out.push(d);
        }
    }
    out
}

fn syntax_diag(file: &SourceFile, e: &kiln_grammar::SyntaxError) -> SemaDiagnostic {
    SemaDiagnostic {
        code: e.code(),
        message: e.message.clone(),
        severity: Severity::Error,
        file_name: file.name.clone(),
        source: file.text.clone(),
        labels: std::iter::once(Label {
            span: e.span,
            text: e.label.clone(),
        })
        .chain(e.labels.iter().map(|(s, t)| Label {
            span: *s,
            text: t.clone(),
        }))
        .collect(),
        help: e.help.clone(),
        related: Vec::new(),
    }
}

/// Parameter counts of a lowered model. `non_embedding` leaves out the parameters used as lookup
/// tables (token and position embeddings, T5's relative-position tables): those read by `gather`
/// or sliced along their first axis, as Kaplan et al. 2020 count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParamCounts {
    pub total: u64,
    pub non_embedding: u64,
}

pub fn param_counts(g: &Graph) -> ParamCounts {
    let mut total = 0u64;
    let mut emb = 0u64;
    for p in g.params() {
        // Saturating: a spec may declare more than 2^64 elements; the count must not panic.
        let n: u64 = g.shape(p).iter().fold(1u64, |acc, d| {
            acc.saturating_mul(d.as_const().unwrap_or(0).max(0) as u64)
        });
        total = total.saturating_add(n);
        let is_table = g.users(p).iter().any(|u| {
            let node = g.node(*u);
            match node.op() {
                Op::Gather => node.inputs().first() == Some(&p),
                Op::Slice { axis: 0, .. } => true,
                _ => false,
            }
        });
        if is_table {
            emb = emb.saturating_add(n);
        }
    }
    ParamCounts {
        total,
        non_embedding: total.saturating_sub(emb),
    }
}

/// Parse a `--set` value: integers, floats, `true`/`false`, `none`, quoted strings, the mask names
/// and dtypes; anything else is taken as a bare string.
pub fn parse_value(s: &str) -> Value {
    let t = s.trim();
    if let Ok(n) = t.replace('_', "").parse::<i64>() {
        return Value::Int(crate::ir::Dim::c(n));
    }
    if let Ok(x) = t.parse::<f64>() {
        return Value::Float(x);
    }
    match t {
        "true" => return Value::Bool(true),
        "false" => return Value::Bool(false),
        "none" => return Value::None,
        _ => {}
    }
    if let Some(v) = builtins::constant(t, false) {
        return v;
    }
    if let Some(w) = t.strip_prefix("banded(").and_then(|r| r.strip_suffix(')')) {
        if let Ok(w) = w.trim().parse::<i64>() {
            return Value::Mask(Mask::Banded(w));
        }
    }
    Value::Str(t.trim_matches('"').to_string())
}
