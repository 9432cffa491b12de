//! The evaluator: runs a model (and objective) spec with compile-time hyperparameters and symbolic
//! run dims, checking shapes and dtypes as it goes and emitting primitive ops into the graph.
//!
//! Checking and lowering are one walk: every shape rule is the op table's (`ir::infer`), so the
//! checker can never disagree with the compiler. Blocks are expanded at each call (no block exists
//! in the graph), each call in its own parameter scope (`h.3.attn.q.weight`).
//!
//! What it deliberately does not do: optimise (passes do), or decide anything about execution.

use std::collections::{BTreeMap, HashMap};

use kiln_grammar::ast::{
    self, BinaryOp, BlockKind, Expr, ExprKind, IndexItem, Item, Stmt, UnaryOp,
};

use super::builtins;
use super::diag::{did_you_mean, FileId, Loc};
use super::lower::Lower;
use super::value::Value;
use super::Workspace;
use crate::ir::{BinaryOp as IrBin, CmpOp, DType, Dim, IrError, Op, UnaryOp as IrUn, ValueId};

/// Limits that keep any input — however hostile — from hanging the checker. They bound time:
/// lowering costs 10–17 µs per graph node and a few hundred ns per step (debug or release alike:
/// the cost is allocation), so these caps reject a runaway spec in one to two seconds. The
/// largest published config, PaLM-540B, lowers to 18 790 nodes; `MAX_NODES` leaves 8 times that
/// (a GPT-2-style model of 900 layers fits).
pub const MAX_CALL_DEPTH: usize = 64;
pub const MAX_NODES: usize = 150_000;
pub const MAX_STEPS: u64 = 5_000_000;

/// One frame of the block call stack (for diagnostics that arise inside the stdlib).
#[derive(Clone, Debug)]
pub struct Frame {
    pub call: Loc,
    pub callee: String,
}

/// An error found while evaluating, before it is rendered against the files.
#[derive(Clone, Debug)]
pub struct EvalError {
    pub code: &'static str,
    pub message: String,
    pub loc: Loc,
    pub label: String,
    pub help: Option<String>,
    /// Extra places worth showing (e.g. the parameter declaration a value failed to match).
    pub notes: Vec<(Loc, String)>,
    pub stack: Vec<Frame>,
}

pub type R<T> = Result<T, Box<EvalError>>;

/// A data-side transform requested by an objective (`data span_corrupt(...)`).
#[derive(Clone, Debug, PartialEq)]
pub struct DataTransform {
    pub name: String,
    pub args: BTreeMap<String, Value>,
}

/// The model an objective's `model(...)` calls.
#[derive(Clone, Debug)]
pub struct ModelBinding {
    pub item: (FileId, usize),
    pub hparams: Vec<(String, Value)>,
}

enum Flow {
    Normal,
    Return(Value),
}

pub struct Env {
    pub vars: HashMap<String, Value>,
    /// Positional model inputs supplied by the caller (objective → model), consumed by `input`.
    pending_inputs: Vec<(Value, Loc)>,
    kind: BlockKind,
    is_root: bool,
}

impl Env {
    /// An environment with no names (for config arguments and hyperparameter defaults).
    pub fn empty() -> Self {
        Env::new(BlockKind::Block, false)
    }

    fn new(kind: BlockKind, is_root: bool) -> Self {
        Env {
            vars: HashMap::new(),
            pending_inputs: Vec::new(),
            kind,
            is_root,
        }
    }
}

pub struct Eval<'w> {
    pub ws: &'w Workspace,
    pub lower: Lower,
    pub training: bool,
    stack: Vec<Frame>,
    scope: Vec<String>,
    label_counts: Vec<HashMap<String, usize>>,
    param_decls: HashMap<String, Loc>,
    rng_stream: u64,
    steps: u64,
    pub model: Option<ModelBinding>,
    pub data: Option<DataTransform>,
    /// Whether the model has been called by the objective yet (its scope is the root scope).
    model_called: bool,
    pub logits: Option<ValueId>,
}

/// An argument at a call site, evaluated.
#[derive(Clone, Debug)]
pub struct ArgVal {
    pub name: Option<String>,
    pub value: Value,
    pub loc: Loc,
}

impl<'w> Eval<'w> {
    pub fn new(ws: &'w Workspace, training: bool) -> Self {
        Eval {
            ws,
            lower: Lower::new(),
            training,
            stack: Vec::new(),
            scope: Vec::new(),
            label_counts: vec![HashMap::new()],
            param_decls: HashMap::new(),
            rng_stream: 0,
            steps: 0,
            model: None,
            data: None,
            model_called: false,
            logits: None,
        }
    }

    // ----- errors -------------------------------------------------------------------------------

    pub fn err(&self, code: &'static str, loc: Loc, message: impl Into<String>) -> Box<EvalError> {
        let message = message.into();
        Box::new(EvalError {
            code,
            label: String::new(),
            message,
            loc,
            help: None,
            notes: Vec::new(),
            stack: self.stack.clone(),
        })
    }

    pub fn err_help(
        &self,
        code: &'static str,
        loc: Loc,
        message: impl Into<String>,
        help: impl Into<String>,
    ) -> Box<EvalError> {
        let mut e = self.err(code, loc, message);
        e.help = Some(help.into());
        e
    }

    /// Turn an op-table error into a diagnostic at the expression that emitted the op.
    pub fn ir_err(&self, loc: Loc, e: IrError) -> Box<EvalError> {
        let code = match &e {
            IrError::ShapeMismatch { .. } => "shape::mismatch",
            IrError::DTypeError { .. } => "shape::dtype",
            _ => "shape::invalid",
        };
        self.err(code, loc, e.to_string())
    }

    /// The place a user would recognise: `loc` itself in a user file, else the innermost call from
    /// a user file.
    fn user_loc(&self, loc: Loc) -> Loc {
        if !self.ws.files[loc.file].is_stdlib {
            return loc;
        }
        self.stack
            .iter()
            .rev()
            .find(|f| !self.ws.files[f.call.file].is_stdlib)
            .map(|f| f.call)
            .unwrap_or(loc)
    }

    fn tick(&mut self, loc: Loc) -> R<()> {
        self.steps += 1;
        if self.steps > MAX_STEPS || self.lower.len() > MAX_NODES {
            return Err(self.err_help(
                "sema::too_large",
                loc,
                "the spec expands to too large a program",
                format!(
                    "Kiln stops after {MAX_STEPS} evaluation steps or {MAX_NODES} graph nodes; check `repeat` counts"
                ),
            ));
        }
        Ok(())
    }

    // ----- scopes -------------------------------------------------------------------------------

    pub fn scope_path(&self) -> String {
        self.scope.join(".")
    }

    fn push_scope(&mut self, name: String) {
        self.scope.push(name);
        self.label_counts.push(HashMap::new());
        self.lower.set_scope(self.scope_path());
    }

    fn pop_scope(&mut self) {
        self.scope.pop();
        self.label_counts.pop();
        self.lower.set_scope(self.scope_path());
    }

    /// `linear`, then `linear_1`, `linear_2` for unlabelled calls of the same block in one scope.
    fn default_label(&mut self, base: &str) -> String {
        let counts = self.label_counts.last_mut().expect("root scope");
        let n = counts.entry(base.to_string()).or_insert(0);
        let label = if *n == 0 {
            base.to_string()
        } else {
            format!("{base}_{n}")
        };
        *n += 1;
        label
    }

    // ----- entry points -------------------------------------------------------------------------

    /// Evaluate a model as the root of the program: its `input`s become graph inputs.
    pub fn run_model_root(
        &mut self,
        item: (FileId, usize),
        hparams: &[(String, Value)],
        at: Loc,
    ) -> R<Value> {
        self.run_model(item, hparams, Vec::new(), at, true)
    }

    /// Evaluate an objective over `model`: the objective's `input`s are the graph inputs.
    pub fn run_objective(
        &mut self,
        item: (FileId, usize),
        args: &[(String, Value)],
        at: Loc,
    ) -> R<Value> {
        let (file, idx) = item;
        let Item::Block(def) = &self.ws.asts[file].items[idx] else {
            return Err(self.err("sema::not_objective", at, "not an objective"));
        };
        let mut env = Env::new(BlockKind::Objective, true);
        let given: Vec<ArgVal> = args
            .iter()
            .map(|(k, v)| ArgVal {
                name: Some(k.clone()),
                value: v.clone(),
                loc: at,
            })
            .collect();
        self.bind_params(file, &def.params, &given, &mut env, at, &def.name.name)?;
        let out = self.exec_body(file, &def.body, &mut env)?;
        if !self.model_called {
            return Err(self.err(
                "sema::objective_without_model",
                Loc {
                    file,
                    span: def.name.span,
                },
                format!("objective `{}` never calls `model(...)`", def.name.name),
            ));
        }
        Ok(out)
    }

    fn run_model(
        &mut self,
        item: (FileId, usize),
        hparams: &[(String, Value)],
        inputs: Vec<(Value, Loc)>,
        at: Loc,
        is_root: bool,
    ) -> R<Value> {
        let (file, idx) = item;
        let Item::Block(def) = &self.ws.asts[file].items[idx] else {
            return Err(self.err("sema::not_model", at, "not a model"));
        };
        let mut env = Env::new(BlockKind::Model, is_root);
        env.pending_inputs = inputs;
        let given: Vec<ArgVal> = hparams
            .iter()
            .map(|(k, v)| ArgVal {
                name: Some(k.clone()),
                value: v.clone(),
                loc: at,
            })
            .collect();
        self.bind_params(file, &def.params, &given, &mut env, at, &def.name.name)?;
        let out = self.exec_body(file, &def.body, &mut env)?;
        if let Some((_, loc)) = env.pending_inputs.first() {
            return Err(self.err(
                "sema::too_many_args",
                *loc,
                format!(
                    "model `{}` declares fewer inputs than it was given",
                    def.name.name
                ),
            ));
        }
        Ok(out)
    }

    fn exec_body(&mut self, file: FileId, body: &[Stmt], env: &mut Env) -> R<Value> {
        match self.exec_stmts(file, body, env)? {
            Flow::Return(v) => Ok(v),
            Flow::Normal => Ok(Value::None),
        }
    }

    // ----- parameters of blocks -----------------------------------------------------------------

    /// Bind call arguments to formal parameters: positional, then named, then defaults (evaluated in
    /// the callee's environment, in order, so `head_dim = d / heads` sees `d` from `x: [b, t, d]`).
    fn bind_params(
        &mut self,
        file: FileId,
        params: &[ast::ParamDecl],
        args: &[ArgVal],
        env: &mut Env,
        call: Loc,
        callee: &str,
    ) -> R<()> {
        let mut given: Vec<Option<&ArgVal>> = vec![None; params.len()];
        let mut positional = 0usize;
        for a in args {
            match &a.name {
                None => {
                    if positional >= params.len() {
                        return Err(self.err_help(
                            "sema::too_many_args",
                            a.loc,
                            format!(
                                "`{callee}` takes {} argument(s), but more were given",
                                params.len()
                            ),
                            format!("`{callee}` takes: {}", param_list(params)),
                        ));
                    }
                    given[positional] = Some(a);
                    positional += 1;
                }
                Some(n) => {
                    let Some(i) = params.iter().position(|p| &p.name.name == n) else {
                        let mut e = self.err(
                            "sema::unknown_argument",
                            a.loc,
                            format!("`{callee}` has no parameter `{n}`"),
                        );
                        e.help = Some(
                            match did_you_mean(n, params.iter().map(|p| p.name.name.as_str())) {
                                Some(s) => format!("did you mean `{s}`?"),
                                None => format!("`{callee}` takes: {}", param_list(params)),
                            },
                        );
                        return Err(e);
                    };
                    if given[i].is_some() {
                        return Err(self.err(
                            "sema::duplicate_argument",
                            a.loc,
                            format!("argument `{n}` of `{callee}` is given twice"),
                        ));
                    }
                    given[i] = Some(a);
                }
            }
        }
        // Given values first (with their shape patterns), then defaults in order.
        for (p, g) in params.iter().zip(&given) {
            if let Some(a) = g {
                if let Some(ty) = &p.ty {
                    self.match_type(file, ty, &a.value, a.loc, &p.name.name, env)?;
                }
                env.vars.insert(p.name.name.clone(), a.value.clone());
            }
        }
        for (p, g) in params.iter().zip(&given) {
            if g.is_none() {
                let Some(default) = &p.default else {
                    return Err(self.err_help(
                        "sema::missing_argument",
                        call,
                        format!("`{callee}` needs an argument for `{}`", p.name.name),
                        format!("`{callee}` takes: {}", param_list(params)),
                    ));
                };
                let v = self.eval(file, default, env)?;
                env.vars.insert(p.name.name.clone(), v);
            }
        }
        Ok(())
    }

    /// Match a value against a declared tensor type, binding dim names not yet bound.
    fn match_type(
        &mut self,
        file: FileId,
        ty: &ast::TensorType,
        value: &Value,
        at: Loc,
        what: &str,
        env: &mut Env,
    ) -> R<()> {
        let Value::Tensor(v) = value else {
            let mut e = self.err(
                "shape::expected_tensor",
                at,
                format!("`{what}` must be a tensor, found {}", value.kind()),
            );
            e.notes.push((
                Loc {
                    file,
                    span: ty.span,
                },
                "declared here".into(),
            ));
            return Err(e);
        };
        let t = self.lower.ty(*v);
        if let Some(dt) = &ty.dtype {
            let want = self.dtype_name(file, dt)?;
            if want != t.dtype {
                let mut e = self.err(
                    "shape::dtype",
                    at,
                    format!("`{what}` must be {}, found {}", want.name(), t.dtype.name()),
                );
                e.notes.push((
                    Loc {
                        file,
                        span: ty.span,
                    },
                    "declared here".into(),
                ));
                return Err(e);
            }
        }
        let has_ellipsis = ty
            .dims
            .iter()
            .any(|d| matches!(d, ast::DimPat::Ellipsis(_)));
        let fixed = ty.dims.len() - usize::from(has_ellipsis);
        let rank = t.shape.len();
        let rank_ok = if has_ellipsis {
            rank >= fixed
        } else {
            rank == fixed
        };
        let pattern = type_text(ty, &self.ws.files[file].text);
        if !rank_ok {
            let mut e = self.err(
                "shape::rank",
                at,
                format!(
                    "`{what}` must have shape {pattern}, found {} (rank {rank})",
                    self.lower.type_str(*v)
                ),
            );
            e.notes.push((
                Loc {
                    file,
                    span: ty.span,
                },
                "declared here".into(),
            ));
            return Err(e);
        }
        let lead = rank - fixed;
        let mut axis = 0usize;
        for d in &ty.dims {
            match d {
                ast::DimPat::Ellipsis(_) => axis += lead,
                ast::DimPat::Expr(e) => {
                    let actual = t.shape[axis].clone();
                    if let ExprKind::Name(id) = &e.kind {
                        if !env.vars.contains_key(&id.name) && !builtins::is_constant(&id.name) {
                            env.vars.insert(id.name.clone(), Value::Int(actual));
                            axis += 1;
                            continue;
                        }
                    }
                    let want = self.eval_int(file, e, env)?;
                    if want != actual {
                        let mut err = self.err(
                            "shape::mismatch",
                            at,
                            format!(
                                "`{what}` must have shape {pattern} with dim {axis} = {want}, found {}",
                                self.lower.type_str(*v)
                            ),
                        );
                        err.notes
                            .push((Loc { file, span: e.span }, format!("this dim is {want}")));
                        return Err(err);
                    }
                    axis += 1;
                }
            }
        }
        Ok(())
    }

    pub fn dtype_name(&self, file: FileId, id: &ast::Ident) -> R<DType> {
        DType::from_name(&id.name).ok_or_else(|| {
            let mut e = self.err(
                "sema::unknown_dtype",
                Loc {
                    file,
                    span: id.span,
                },
                format!("unknown dtype `{}`", id.name),
            );
            e.help = Some(
                match did_you_mean(&id.name, builtins::DTYPES.iter().copied()) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => format!("dtypes: {}", builtins::DTYPES.join(", ")),
                },
            );
            e
        })
    }

    // ----- statements ---------------------------------------------------------------------------

    fn exec_stmts(&mut self, file: FileId, stmts: &[Stmt], env: &mut Env) -> R<Flow> {
        for s in stmts {
            if let Flow::Return(v) = self.exec_stmt(file, s, env)? {
                return Ok(Flow::Return(v));
            }
        }
        Ok(Flow::Normal)
    }

    fn exec_stmt(&mut self, file: FileId, stmt: &Stmt, env: &mut Env) -> R<Flow> {
        let loc = Loc {
            file,
            span: stmt.span(),
        };
        self.tick(loc)?;
        match stmt {
            Stmt::Assign { target, value, .. } => {
                let v = self.eval(file, value, env)?;
                env.vars.insert(target.name.clone(), v);
            }
            Stmt::Return { value, .. } => {
                let v = self.eval(file, value, env)?;
                return Ok(Flow::Return(v));
            }
            Stmt::If {
                cond,
                then_body,
                else_body,
                ..
            } => {
                let c = self.eval_bool(file, cond, env)?;
                if c {
                    return self.exec_stmts(file, then_body, env);
                } else if let Some(e) = else_body {
                    return self.exec_stmts(file, e, env);
                }
            }
            Stmt::Repeat {
                var,
                count,
                label,
                body,
                ..
            } => {
                let n = self.eval_const_int(file, count, env)?;
                if n < 0 {
                    return Err(self.err(
                        "sema::negative_repeat",
                        Loc {
                            file,
                            span: count.span,
                        },
                        format!("`repeat` count is negative ({n})"),
                    ));
                }
                // Every iteration costs at least one step: a count beyond the steps left can only
                // end in `sema::too_large`, so say so now rather than after seconds of unrolling.
                if n as u64 > MAX_STEPS.saturating_sub(self.steps) {
                    return Err(self.err_help(
                        "sema::too_large",
                        Loc { file, span: count.span },
                        format!("`repeat {n}` unrolls into too large a program"),
                        format!("Kiln stops after {MAX_STEPS} evaluation steps or {MAX_NODES} graph nodes"),
                    ));
                }
                let label = match label {
                    Some(l) => l.name.clone(),
                    None => self.default_label("blocks"),
                };
                for i in 0..n {
                    // Each iteration counts, so that even an empty body cannot loop for ever.
                    self.tick(loc)?;
                    if let Some(v) = var {
                        env.vars.insert(v.name.clone(), Value::Int(Dim::c(i)));
                    }
                    self.push_scope(format!("{label}.{i}"));
                    let flow = self.exec_stmts(file, body, env);
                    self.pop_scope();
                    if let Flow::Return(_) = flow? {
                        return Err(self.err(
                            "sema::return_in_repeat",
                            loc,
                            "`return` inside `repeat` is not allowed",
                        ));
                    }
                }
            }
            Stmt::Assert { cond, message, .. } => {
                if !self.eval_bool(file, cond, env)? {
                    let msg = message
                        .clone()
                        .unwrap_or_else(|| "assertion failed".to_string());
                    let mut e = self.err(
                        "sema::assert",
                        Loc {
                            file,
                            span: cond.span,
                        },
                        msg,
                    );
                    e.label = "this is false".into();
                    return Err(e);
                }
            }
            Stmt::Input { name, ty, .. } => self.exec_input(file, name, ty, env, loc)?,
            Stmt::Param { name, ty, init, .. } => {
                self.exec_param(file, name, ty, init, env, loc)?
            }
            Stmt::Data { call, .. } => {
                if env.kind != BlockKind::Objective {
                    return Err(self.err(
                        "sema::data_outside_objective",
                        loc,
                        "`data` transforms belong in an `objective`",
                    ));
                }
                let ExprKind::Call { callee, args, .. } = &call.kind else {
                    return Err(self.err("sema::data_call", loc, "`data` takes a transform call"));
                };
                let name = callee.name.clone();
                if !builtins::DATA_TRANSFORMS.contains(&name.as_str()) {
                    let mut e = self.err(
                        "sema::unknown_transform",
                        Loc {
                            file,
                            span: callee.span,
                        },
                        format!("unknown data transform `{name}`"),
                    );
                    e.help = Some(
                        did_you_mean(&name, builtins::DATA_TRANSFORMS.iter().copied())
                            .map(|s| format!("did you mean `{s}`?"))
                            .unwrap_or_else(|| {
                                format!("transforms: {}", builtins::DATA_TRANSFORMS.join(", "))
                            }),
                    );
                    return Err(e);
                }
                let mut out = BTreeMap::new();
                for a in args {
                    let Some(k) = &a.name else {
                        return Err(self.err(
                            "sema::data_call",
                            Loc { file, span: a.span },
                            "data transform arguments are named (`noise_density = 0.15`)",
                        ));
                    };
                    let v = self.eval(file, &a.value, env)?;
                    out.insert(k.name.clone(), v);
                }
                self.data = Some(DataTransform { name, args: out });
            }
        }
        Ok(Flow::Normal)
    }

    fn exec_input(
        &mut self,
        file: FileId,
        name: &ast::Ident,
        ty: &ast::TensorType,
        env: &mut Env,
        loc: Loc,
    ) -> R<()> {
        if env.kind == BlockKind::Block {
            return Err(self.err_help(
                "sema::input_in_block",
                loc,
                "`input` declares data of a model or objective, not of a block",
                "pass the tensor to the block as an argument",
            ));
        }
        if !env.pending_inputs.is_empty() {
            let (v, at) = env.pending_inputs.remove(0);
            self.match_type(file, ty, &v, at, &name.name, env)?;
            env.vars.insert(name.name.clone(), v);
            return Ok(());
        }
        if !env.is_root {
            return Err(self.err(
                "sema::missing_input",
                self.stack.last().map(|f| f.call).unwrap_or(loc),
                format!(
                    "the model needs input `{}`, but the call does not supply it",
                    name.name
                ),
            ));
        }
        // Root input: unbound names in its dims become symbolic run dims (`batch`, `seq`).
        for d in &ty.dims {
            if let ast::DimPat::Expr(e) = d {
                let mut names = Vec::new();
                free_names(e, &mut names);
                for n in names {
                    if !env.vars.contains_key(&n) && !builtins::is_constant(&n) {
                        env.vars.insert(n.clone(), Value::Int(Dim::sym(&n)));
                    }
                }
            } else {
                return Err(self.err(
                    "shape::ellipsis_input",
                    loc,
                    "an `input` needs a fully known shape (no `...`)",
                ));
            }
        }
        let dtype = match &ty.dtype {
            Some(d) => self.dtype_name(file, d)?,
            None => DType::F32,
        };
        let mut shape = Vec::new();
        for d in &ty.dims {
            if let ast::DimPat::Expr(e) = d {
                shape.push(self.eval_int(file, e, env)?);
            }
        }
        // Before the node exists: the graph itself refuses a second input of a name, with a
        // less precise error.
        if self.lower.has_input(&name.name) {
            return Err(self.err(
                "sema::duplicate_input",
                loc,
                format!("input `{}` is declared twice", name.name),
            ));
        }
        let v = self
            .lower
            .node(
                Op::Input {
                    name: name.name.clone(),
                    shape,
                    dtype,
                },
                &[],
            )
            .map_err(|e| self.ir_err(loc, e))?;
        env.vars.insert(name.name.clone(), Value::Tensor(v));
        Ok(())
    }

    fn exec_param(
        &mut self,
        file: FileId,
        name: &ast::Ident,
        ty: &ast::TensorType,
        init: &Expr,
        env: &mut Env,
        loc: Loc,
    ) -> R<()> {
        if env.kind == BlockKind::Objective {
            return Err(self.err(
                "sema::param_in_objective",
                loc,
                "objectives have no parameters",
            ));
        }
        let dtype = match &ty.dtype {
            Some(d) => self.dtype_name(file, d)?,
            None => DType::F32,
        };
        let mut shape = Vec::new();
        for d in &ty.dims {
            match d {
                ast::DimPat::Ellipsis(s) => {
                    return Err(self.err(
                        "shape::ellipsis_param",
                        Loc { file, span: *s },
                        "a parameter needs a fully known shape (no `...`)",
                    ))
                }
                ast::DimPat::Expr(e) => {
                    let dim = self.eval_int(file, e, env)?;
                    match dim.as_const() {
                        Some(n) if n > 0 => shape.push(dim),
                        Some(n) => {
                            return Err(self.err(
                                "shape::param_dim",
                                Loc { file, span: e.span },
                                format!(
                                    "parameter `{}` has a dim of {n}; dims must be positive",
                                    name.name
                                ),
                            ))
                        }
                        None => {
                            return Err(self.err_help(
                                "shape::symbolic_param",
                                Loc { file, span: e.span },
                                format!(
                                    "parameter `{}` has a dim that depends on the run ({dim})",
                                    name.name
                                ),
                                "parameter shapes must be fixed by hyperparameters alone",
                            ))
                        }
                    }
                }
            }
        }
        let init = self.eval_init(file, init, env)?;
        let full = if self.scope.is_empty() {
            name.name.clone()
        } else {
            format!("{}.{}", self.scope_path(), name.name)
        };
        if let Some(prev) = self.param_decls.get(&full) {
            let mut e = self.err_help(
                "sema::duplicate_param",
                loc,
                format!("parameter `{full}` is declared twice"),
                "give one of the calls a different label with `as`",
            );
            e.notes.push((*prev, "first declared by this call".into()));
            return Err(e);
        }
        self.param_decls.insert(full.clone(), self.user_loc(loc));
        let v = self
            .lower
            .unique_param(Op::Param {
                name: full,
                shape,
                dtype,
                init,
                trainable: true,
            })
            .map_err(|e| self.ir_err(loc, e))?;
        env.vars.insert(name.name.clone(), Value::Tensor(v));
        Ok(())
    }

    fn eval_init(&mut self, file: FileId, init: &Expr, env: &mut Env) -> R<crate::ir::Init> {
        use crate::ir::Init;
        let loc = Loc {
            file,
            span: init.span,
        };
        let bad = |me: &Self| {
            me.err_help(
                "sema::bad_init",
                loc,
                "a parameter's initialiser must be `normal(std)`, `uniform(low, high)`, `constant(v)`, `zeros` or `ones`",
                "e.g. `param w: [d, out] = normal(0.02)`",
            )
        };
        match &init.kind {
            ExprKind::Name(id) if id.name == "zeros" => Ok(Init::Zeros),
            ExprKind::Name(id) if id.name == "ones" => Ok(Init::Ones),
            ExprKind::Call {
                callee,
                args,
                label: None,
            } => {
                let mut vals = Vec::new();
                for a in args {
                    vals.push(self.eval_float(file, &a.value, env)?);
                }
                match (callee.name.as_str(), vals.as_slice()) {
                    ("normal", [std]) if *std >= 0.0 && std.is_finite() => {
                        Ok(Init::Normal { std: *std })
                    }
                    ("normal", [std]) => Err(self.err(
                        "sema::bad_init",
                        loc,
                        format!("`normal` needs a finite, non-negative std, found {std}"),
                    )),
                    ("uniform", [lo, hi]) if lo <= hi => Ok(Init::Uniform {
                        low: *lo,
                        high: *hi,
                    }),
                    ("constant", [v]) => Ok(Init::Const(*v)),
                    _ => Err(bad(self)),
                }
            }
            _ => Err(bad(self)),
        }
    }

    // ----- expressions --------------------------------------------------------------------------

    pub fn eval(&mut self, file: FileId, e: &Expr, env: &mut Env) -> R<Value> {
        let loc = Loc { file, span: e.span };
        self.tick(loc)?;
        match &e.kind {
            ExprKind::Int(n) => Ok(Value::Int(Dim::c(*n))),
            ExprKind::Float(x, _) => Ok(Value::Float(*x)),
            ExprKind::Bool(b) => Ok(Value::Bool(*b)),
            ExprKind::Str(s) => Ok(Value::Str(s.clone())),
            ExprKind::None => Ok(Value::None),
            ExprKind::Paren(inner) => self.eval(file, inner, env),
            ExprKind::Name(id) => self.lookup(file, id, env),
            ExprKind::List(items) => {
                let mut out = Vec::with_capacity(items.len());
                for i in items {
                    out.push(self.eval(file, i, env)?);
                }
                Ok(Value::List(out))
            }
            ExprKind::Unary { op, operand } => {
                let v = self.eval(file, operand, env)?;
                self.unary(*op, v, loc)
            }
            ExprKind::Binary {
                op: BinaryOp::And,
                lhs,
                rhs,
            } => {
                if !self.eval_bool(file, lhs, env)? {
                    return Ok(Value::Bool(false));
                }
                Ok(Value::Bool(self.eval_bool(file, rhs, env)?))
            }
            ExprKind::Binary {
                op: BinaryOp::Or,
                lhs,
                rhs,
            } => {
                if self.eval_bool(file, lhs, env)? {
                    return Ok(Value::Bool(true));
                }
                Ok(Value::Bool(self.eval_bool(file, rhs, env)?))
            }
            ExprKind::Binary { op, lhs, rhs } => {
                let a = self.eval(file, lhs, env)?;
                let b = self.eval(file, rhs, env)?;
                let r = self.binary(
                    *op,
                    a.clone(),
                    b.clone(),
                    loc,
                    Loc {
                        file,
                        span: lhs.span,
                    },
                    Loc {
                        file,
                        span: rhs.span,
                    },
                );
                r.map_err(|mut err| {
                    if err.code == "sema::not_divisible" {
                        // Name both operands as written: "`d` (96) is not divisible by `heads` (5)".
                        let text = &self.ws.files[file].text;
                        let src = |e: &Expr| {
                            text.get(e.span.start..e.span.end)
                                .unwrap_or("?")
                                .to_string()
                        };
                        let (ls, rs) = (src(lhs), src(rhs));
                        let show = |s: &str, v: &Value| {
                            if s == v.to_string() {
                                s.to_string()
                            } else {
                                format!("`{s}` ({v})")
                            }
                        };
                        err.message =
                            format!("{} is not divisible by {}", show(&ls, &a), show(&rs, &b));
                    }
                    err
                })
            }
            ExprKind::IfElse {
                cond,
                then_expr,
                else_expr,
            } => {
                if self.eval_bool(file, cond, env)? {
                    self.eval(file, then_expr, env)
                } else {
                    self.eval(file, else_expr, env)
                }
            }
            ExprKind::Index { base, items } => {
                let b = self.eval(file, base, env)?;
                self.index(file, b, items, env, loc)
            }
            ExprKind::Member { name, .. } => Err(self.err(
                "sema::member",
                Loc {
                    file,
                    span: name.span,
                },
                format!("member access `.{}` is not supported", name.name),
            )),
            ExprKind::Call {
                callee,
                args,
                label,
            } => self.call(file, callee, args, label.as_ref(), env, loc),
        }
    }

    fn lookup(&mut self, file: FileId, id: &ast::Ident, env: &Env) -> R<Value> {
        if let Some(v) = env.vars.get(&id.name) {
            return Ok(v.clone());
        }
        if let Some(v) = builtins::constant(&id.name, self.training) {
            return Ok(v);
        }
        let loc = Loc {
            file,
            span: id.span,
        };
        let mut e = self.err(
            "sema::unknown_name",
            loc,
            format!("unknown name `{}`", id.name),
        );
        e.label = "not defined here".into();
        let candidates: Vec<&str> = env
            .vars
            .keys()
            .map(|s| s.as_str())
            .chain(builtins::CONSTANTS.iter().copied())
            .collect();
        e.help = did_you_mean(&id.name, candidates).map(|s| format!("did you mean `{s}`?"));
        Err(e)
    }

    pub fn eval_bool(&mut self, file: FileId, e: &Expr, env: &mut Env) -> R<bool> {
        match self.eval(file, e, env)? {
            Value::Bool(b) => Ok(b),
            v => Err(self.err(
                "sema::type",
                Loc { file, span: e.span },
                format!("expected a compile-time bool, found {}", v.kind()),
            )),
        }
    }

    pub fn eval_int(&mut self, file: FileId, e: &Expr, env: &mut Env) -> R<Dim> {
        match self.eval(file, e, env)? {
            Value::Int(d) => Ok(d),
            v => Err(self.err(
                "sema::type",
                Loc { file, span: e.span },
                format!("expected an integer, found {}", v.kind()),
            )),
        }
    }

    fn eval_const_int(&mut self, file: FileId, e: &Expr, env: &mut Env) -> R<i64> {
        let d = self.eval_int(file, e, env)?;
        d.as_const().ok_or_else(|| {
            self.err(
                "sema::symbolic",
                Loc { file, span: e.span },
                format!("expected a fixed integer, found `{d}`, which depends on the run"),
            )
        })
    }

    fn eval_float(&mut self, file: FileId, e: &Expr, env: &mut Env) -> R<f64> {
        let v = self.eval(file, e, env)?;
        self.as_float(&v, Loc { file, span: e.span })
    }

    pub fn as_float(&self, v: &Value, loc: Loc) -> R<f64> {
        match v {
            Value::Float(x) => Ok(*x),
            Value::Int(d) => d.as_const().map(|n| n as f64).ok_or_else(|| {
                self.err(
                    "sema::symbolic",
                    loc,
                    format!("expected a number, found the run dim `{d}`"),
                )
            }),
            v => Err(self.err(
                "sema::type",
                loc,
                format!("expected a number, found {}", v.kind()),
            )),
        }
    }

    fn unary(&mut self, op: UnaryOp, v: Value, loc: Loc) -> R<Value> {
        match (op, v) {
            (UnaryOp::Neg, Value::Int(d)) => Ok(Value::Int(Dim::c(0).sub(&d))),
            (UnaryOp::Neg, Value::Float(x)) => Ok(Value::Float(-x)),
            (UnaryOp::Neg, Value::Tensor(t)) => Ok(Value::Tensor(
                self.lower
                    .node(Op::Unary(IrUn::Neg), &[t])
                    .map_err(|e| self.ir_err(loc, e))?,
            )),
            (UnaryOp::Not, Value::Bool(b)) => Ok(Value::Bool(!b)),
            (op, v) => Err(self.err(
                "sema::type",
                loc,
                format!(
                    "cannot apply `{}` to {}",
                    if op == UnaryOp::Neg { "-" } else { "not" },
                    v.kind()
                ),
            )),
        }
    }

    pub fn binary(
        &mut self,
        op: BinaryOp,
        a: Value,
        b: Value,
        loc: Loc,
        la: Loc,
        lb: Loc,
    ) -> R<Value> {
        use BinaryOp::*;
        // `x == none`, `mask == causal`: compile-time identity tests, even when one side is a tensor.
        let static_eq = |v: &Value| {
            matches!(
                v,
                Value::None | Value::Str(_) | Value::Mask(_) | Value::DType(_) | Value::List(_)
            )
        };
        if matches!(op, Eq | Ne) && (static_eq(&a) || static_eq(&b)) {
            let eq = match (&a, &b) {
                (Value::Tensor(x), Value::Tensor(y)) => x == y,
                _ => a == b,
            };
            return Ok(Value::Bool(if op == Eq { eq } else { !eq }));
        }
        match (&a, &b) {
            (Value::Tensor(_), _) | (_, Value::Tensor(_)) => {
                return self.tensor_binary(op, a, b, loc, la, lb)
            }
            _ => {}
        }
        match op {
            Eq | Ne => {
                let eq = match (&a, &b) {
                    (Value::Int(x), Value::Int(y)) => x == y,
                    (Value::Int(_), Value::Float(_))
                    | (Value::Float(_), Value::Int(_))
                    | (Value::Float(_), Value::Float(_)) => {
                        self.as_float(&a, la)? == self.as_float(&b, lb)?
                    }
                    _ => a == b,
                };
                return Ok(Value::Bool(if op == Eq { eq } else { !eq }));
            }
            _ => {}
        }
        match (a, b) {
            (Value::Int(x), Value::Int(y)) => self.int_binary(op, x, y, loc, lb),
            (x @ (Value::Int(_) | Value::Float(_)), y @ (Value::Int(_) | Value::Float(_))) => {
                let (x, y) = (self.as_float(&x, la)?, self.as_float(&y, lb)?);
                Ok(match op {
                    Add => Value::Float(x + y),
                    Sub => Value::Float(x - y),
                    Mul => Value::Float(x * y),
                    Div => Value::Float(x / y),
                    FloorDiv => Value::Float((x / y).floor()),
                    Mod => Value::Float(x - y * (x / y).floor()),
                    Pow => Value::Float(x.powf(y)),
                    Lt => Value::Bool(x < y),
                    Le => Value::Bool(x <= y),
                    Gt => Value::Bool(x > y),
                    Ge => Value::Bool(x >= y),
                    MatMul => return Err(self.err("sema::type", loc, "`@` needs tensors")),
                    Eq | Ne | And | Or => unreachable_binary(),
                })
            }
            (x, y) => Err(self.err(
                "sema::type",
                loc,
                format!(
                    "cannot apply `{}` to {} and {}",
                    op.symbol(),
                    x.kind(),
                    y.kind()
                ),
            )),
        }
    }

    fn int_binary(&mut self, op: BinaryOp, x: Dim, y: Dim, loc: Loc, lb: Loc) -> R<Value> {
        use BinaryOp::*;
        let consts = (x.as_const(), y.as_const());
        let need_const = |me: &Self| {
            me.err(
                "sema::symbolic",
                loc,
                format!(
                    "`{}` needs fixed integers, found `{x}` and `{y}`",
                    op.symbol()
                ),
            )
        };
        let overflow = |me: &Self| me.err("sema::overflow", loc, "integer overflow");
        Ok(match op {
            Add => Value::Int(x.add(&y)),
            Sub => Value::Int(x.sub(&y)),
            Mul => Value::Int(x.mul(&y)),
            Div => {
                let Some(d) = y.as_const() else {
                    return Err(need_const(self));
                };
                if d == 0 {
                    return Err(self.err("sema::division_by_zero", lb, "division by zero"));
                }
                if d == -1 {
                    // `div_exact` would overflow on an `i64::MIN` coefficient; this is `-x`.
                    return Ok(Value::Int(Dim::c(0).sub(&x)));
                }
                match x.div_exact(d) {
                    Some(q) => Value::Int(q),
                    None => {
                        let mut e = self.err_help(
                            "sema::not_divisible",
                            loc,
                            format!("`{x}` is not divisible by {d}"),
                            "`/` on integers must divide exactly (use `//` for floor division, or a float)",
                        );
                        e.label = format!("{x} / {d} leaves a remainder");
                        return Err(e);
                    }
                }
            }
            FloorDiv | Mod | Pow | Lt | Le | Gt | Ge => {
                let (Some(a), Some(b)) = consts else {
                    return Err(need_const(self));
                };
                match op {
                    FloorDiv | Mod if b == 0 => {
                        return Err(self.err("sema::division_by_zero", lb, "division by zero"))
                    }
                    FloorDiv => Value::Int(Dim::c(
                        a.checked_div_euclid(b).ok_or_else(|| overflow(self))?,
                    )),
                    // `i64::MIN % -1` overflows in Rust; the remainder of any division by ±1 is 0.
                    Mod if b == -1 => Value::Int(Dim::c(0)),
                    Mod => Value::Int(Dim::c(a.rem_euclid(b))),
                    Pow if b < 0 => Value::Float((a as f64).powf(b as f64)),
                    Pow => {
                        let e = u32::try_from(b).map_err(|_| overflow(self))?;
                        Value::Int(Dim::c(a.checked_pow(e).ok_or_else(|| overflow(self))?))
                    }
                    Lt => Value::Bool(a < b),
                    Le => Value::Bool(a <= b),
                    Gt => Value::Bool(a > b),
                    Ge => Value::Bool(a >= b),
                    _ => unreachable_binary(),
                }
            }
            MatMul => return Err(self.err("sema::type", loc, "`@` needs tensors")),
            Eq | Ne | And | Or => unreachable_binary(),
        })
    }

    /// A scalar operand next to a tensor becomes a constant of the tensor's dtype.
    fn scalar_const(&mut self, v: &Value, dtype: DType, loc: Loc) -> R<ValueId> {
        let value = match (v, dtype) {
            (Value::Int(d), _) => match d.as_const() {
                Some(n) => n as f64,
                None => {
                    if dtype == DType::Bool {
                        return Err(self.err("sema::type", loc, "cannot use a run dim as a bool"));
                    }
                    return self
                        .lower
                        .node(
                            Op::DimConst {
                                dim: d.clone(),
                                dtype,
                            },
                            &[],
                        )
                        .map_err(|e| self.ir_err(loc, e));
                }
            },
            (Value::Float(x), dt) if dt.is_float() => *x,
            (Value::Float(x), dt) => {
                return Err(self.err(
                    "shape::dtype",
                    loc,
                    format!("cannot mix the float {x:?} with a {} tensor", dt.name()),
                ))
            }
            (Value::Bool(b), DType::Bool) => f64::from(u8::from(*b)),
            (v, dt) => {
                return Err(self.err(
                    "sema::type",
                    loc,
                    format!("cannot use {} as a {} tensor", v.kind(), dt.name()),
                ))
            }
        };
        self.lower
            .node(Op::Constant { value, dtype }, &[])
            .map_err(|e| self.ir_err(loc, e))
    }

    /// Bring two or three operands to tensors of one dtype and one (numpy-broadcast) shape.
    pub fn unify(
        &mut self,
        vals: &[(Value, Loc)],
        loc: Loc,
        dtype_hint: Option<DType>,
    ) -> R<Vec<ValueId>> {
        let dtype = vals
            .iter()
            .find_map(|(v, _)| match v {
                Value::Tensor(t) => Some(self.lower.ty(*t).dtype),
                _ => None,
            })
            .or(dtype_hint)
            .ok_or_else(|| self.err("sema::type", loc, "expected at least one tensor operand"))?;
        let mut ids = Vec::new();
        for (v, l) in vals {
            ids.push(match v {
                Value::Tensor(t) => *t,
                other => self.scalar_const(other, dtype, *l)?,
            });
        }
        let shapes: Vec<_> = ids
            .iter()
            .map(|i| self.lower.ty(*i).shape.clone())
            .collect();
        let out = match self.lower.broadcast_shapes(&shapes) {
            Some(s) => s,
            None => {
                let desc: Vec<String> = ids.iter().map(|i| self.lower.type_str(*i)).collect();
                let mut e = self.err(
                    "shape::broadcast",
                    loc,
                    format!("shapes {} cannot be broadcast together", desc.join(" and ")),
                );
                for ((_, l), d) in vals.iter().zip(&desc) {
                    e.notes.push((*l, d.clone()));
                }
                return Err(e);
            }
        };
        let mut res = Vec::new();
        for id in ids {
            res.push(
                self.lower
                    .broadcast_to(id, &out)
                    .map_err(|e| self.ir_err(loc, e))?,
            );
        }
        Ok(res)
    }

    fn tensor_binary(
        &mut self,
        op: BinaryOp,
        a: Value,
        b: Value,
        loc: Loc,
        la: Loc,
        lb: Loc,
    ) -> R<Value> {
        use BinaryOp::*;
        if op == MatMul {
            return self.matmul(a, b, loc, la, lb);
        }
        if op == Pow {
            return match (a, b) {
                (Value::Tensor(t), p @ (Value::Int(_) | Value::Float(_))) => {
                    let p = self.as_float(&p, lb)?;
                    Ok(Value::Tensor(
                        self.lower
                            .node(Op::PowConst { p }, &[t])
                            .map_err(|e| self.ir_err(loc, e))?,
                    ))
                }
                (s @ (Value::Int(_) | Value::Float(_)), Value::Tensor(t)) => {
                    // s ** t = exp(t * ln s)
                    let base = self.as_float(&s, la)?;
                    if base <= 0.0 {
                        return Err(self.err(
                            "sema::domain",
                            la,
                            "a scalar base of `**` with a tensor exponent must be positive",
                        ));
                    }
                    let v = self.tensor_binary(
                        Mul,
                        Value::Tensor(t),
                        Value::Float(base.ln()),
                        loc,
                        lb,
                        la,
                    )?;
                    let Value::Tensor(v) = v else {
                        unreachable_binary()
                    };
                    Ok(Value::Tensor(
                        self.lower
                            .node(Op::Unary(IrUn::Exp), &[v])
                            .map_err(|e| self.ir_err(loc, e))?,
                    ))
                }
                (x, y) => Err(self.err(
                    "sema::type",
                    loc,
                    format!(
                        "`**` takes a tensor and a number, found {} and {}",
                        x.kind(),
                        y.kind()
                    ),
                )),
            };
        }
        let ir_op = match op {
            Add => Op::Binary(IrBin::Add),
            Sub => Op::Binary(IrBin::Sub),
            Mul => Op::Binary(IrBin::Mul),
            Div => Op::Binary(IrBin::Div),
            Lt => Op::Compare(CmpOp::Lt),
            Le => Op::Compare(CmpOp::Le),
            Gt => Op::Compare(CmpOp::Gt),
            Ge => Op::Compare(CmpOp::Ge),
            Eq => Op::Compare(CmpOp::Eq),
            Ne => Op::Compare(CmpOp::Ne),
            FloorDiv | Mod => {
                return Err(self.err_help(
                    "sema::type",
                    loc,
                    format!("`{}` is not defined on tensors", op.symbol()),
                    "use `/` and `cast`",
                ))
            }
            MatMul | Pow | And | Or => {
                return Err(self.err(
                    "sema::type",
                    loc,
                    format!("`{}` is not defined on tensors", op.symbol()),
                ))
            }
        };
        if matches!(a, Value::Tensor(_)) && !is_numeric(&b)
            || matches!(b, Value::Tensor(_)) && !is_numeric(&a)
        {
            return Err(self.err(
                "sema::type",
                loc,
                format!(
                    "cannot apply `{}` to {} and {}",
                    op.symbol(),
                    a.kind(),
                    b.kind()
                ),
            ));
        }
        let ids = self.unify(&[(a, la), (b, lb)], loc, None)?;
        let v = self
            .lower
            .node(ir_op, &ids)
            .map_err(|e| self.ir_err(loc, e))?;
        Ok(Value::Tensor(v))
    }

    fn matmul(&mut self, a: Value, b: Value, loc: Loc, la: Loc, lb: Loc) -> R<Value> {
        let (Value::Tensor(x), Value::Tensor(w)) = (&a, &b) else {
            return Err(self.err(
                "sema::type",
                loc,
                format!("`@` needs two tensors, found {} and {}", a.kind(), b.kind()),
            ));
        };
        let (tx, tw) = (self.lower.ty(*x), self.lower.ty(*w));
        if tx.shape.len() < 2 || tw.shape.len() < 2 {
            return Err(self.err_help(
                "shape::matmul",
                loc,
                format!(
                    "`@` needs operands of rank ≥ 2, found {} and {}",
                    self.lower.type_str(*x),
                    self.lower.type_str(*w)
                ),
                "reshape vectors to [1, n] or [n, 1]",
            ));
        }
        let (k1, k2) = (&tx.shape[tx.shape.len() - 1], &tw.shape[tw.shape.len() - 2]);
        if k1 != k2 {
            let mut e = self.err(
                "shape::matmul",
                loc,
                format!(
                    "`@` contracts {} with {}: inner dims {k1} and {k2} differ",
                    self.lower.type_str(*x),
                    self.lower.type_str(*w)
                ),
            );
            e.notes.push((la, self.lower.type_str(*x)));
            e.notes.push((lb, self.lower.type_str(*w)));
            return Err(e);
        }
        let (mut x, mut w) = (*x, *w);
        if tw.shape.len() > 2 || tx.shape.len() > 2 && tw.shape.len() > 2 {
            // Batched: broadcast the batch dims of both sides to one shape.
            let bx = tx.shape[..tx.shape.len() - 2].to_vec();
            let bw = tw.shape[..tw.shape.len() - 2].to_vec();
            let Some(batch) = self.lower.broadcast_shapes(&[bx, bw]) else {
                return Err(self.err(
                    "shape::broadcast",
                    loc,
                    format!(
                        "batch dims of {} and {} cannot be broadcast together",
                        self.lower.type_str(x),
                        self.lower.type_str(w)
                    ),
                ));
            };
            let mut sx = batch.clone();
            sx.extend_from_slice(&tx.shape[tx.shape.len() - 2..]);
            let mut sw = batch;
            sw.extend_from_slice(&tw.shape[tw.shape.len() - 2..]);
            x = self
                .lower
                .broadcast_to(x, &sx)
                .map_err(|e| self.ir_err(loc, e))?;
            w = self
                .lower
                .broadcast_to(w, &sw)
                .map_err(|e| self.ir_err(loc, e))?;
        }
        let v = self
            .lower
            .node(
                Op::MatMul {
                    transpose_a: false,
                    transpose_b: false,
                },
                &[x, w],
            )
            .map_err(|e| self.ir_err(loc, e))?;
        Ok(Value::Tensor(v))
    }

    fn index(
        &mut self,
        file: FileId,
        base: Value,
        items: &[IndexItem],
        env: &mut Env,
        loc: Loc,
    ) -> R<Value> {
        let t = match base {
            Value::List(xs) => {
                let [IndexItem::Expr(e)] = items else {
                    return Err(self.err("sema::index", loc, "a list takes one integer index"));
                };
                let i = self.eval_const_int(file, e, env)?;
                let n = xs.len() as i64;
                let j = if i < 0 { i + n } else { i };
                return xs
                    .get(usize::try_from(j).unwrap_or(usize::MAX))
                    .cloned()
                    .ok_or_else(|| {
                        self.err(
                            "sema::index",
                            Loc { file, span: e.span },
                            format!("index {i} is out of range for a list of {n}"),
                        )
                    });
            }
            Value::Tensor(t) => t,
            v => return Err(self.err("sema::type", loc, format!("cannot index {}", v.kind()))),
        };
        let ty = self.lower.ty(t);
        let rank = ty.shape.len();
        let n_ell = items
            .iter()
            .filter(|i| matches!(i, IndexItem::Ellipsis(_)))
            .count();
        if n_ell > 1 {
            return Err(self.err("sema::index", loc, "at most one `...` per index"));
        }
        let n_fixed = items.len() - n_ell;
        if n_fixed > rank {
            return Err(self.err(
                "shape::index",
                loc,
                format!(
                    "{n_fixed} indices for a tensor of rank {rank} ({})",
                    self.lower.type_str(t)
                ),
            ));
        }
        let mut axis = 0usize;
        let mut cur = t;
        let mut drop = Vec::new();
        for it in items {
            match it {
                IndexItem::Ellipsis(_) => axis += rank - n_fixed,
                IndexItem::Expr(e) => {
                    let dim = ty.shape[axis].clone();
                    let i = self.eval_int(file, e, env)?;
                    let start = if i.as_const().is_some_and(|c| c < 0) {
                        dim.add(&i)
                    } else {
                        i
                    };
                    let end = start.add(&Dim::c(1));
                    cur = self.slice(cur, axis, start, end, 1, Loc { file, span: e.span })?;
                    drop.push(axis);
                    axis += 1;
                }
                IndexItem::Slice {
                    start,
                    end,
                    step,
                    span,
                } => {
                    let dim = ty.shape[axis].clone();
                    let resolve =
                        |me: &mut Self, e: &Option<Expr>, default: Dim, env: &mut Env| -> R<Dim> {
                            match e {
                                None => Ok(default),
                                Some(e) => {
                                    let i = me.eval_int(file, e, env)?;
                                    Ok(if i.as_const().is_some_and(|c| c < 0) {
                                        dim.add(&i)
                                    } else {
                                        i
                                    })
                                }
                            }
                        };
                    let s = resolve(self, start, Dim::c(0), env)?;
                    let en = resolve(self, end, dim.clone(), env)?;
                    let st = match step {
                        None => 1,
                        Some(e) => self.eval_const_int(file, e, env)?,
                    };
                    if st < 1 {
                        return Err(self.err(
                            "shape::index",
                            Loc { file, span: *span },
                            "slice steps must be positive",
                        ));
                    }
                    if !(s.as_const() == Some(0) && en == dim && st == 1) {
                        cur = self.slice(cur, axis, s, en, st, Loc { file, span: *span })?;
                    }
                    axis += 1;
                }
            }
        }
        if !drop.is_empty() {
            let shape: Vec<Dim> = self
                .lower
                .ty(cur)
                .shape
                .iter()
                .enumerate()
                .filter(|(i, _)| !drop.contains(i))
                .map(|(_, d)| d.clone())
                .collect();
            cur = self
                .lower
                .node(Op::Reshape { shape }, &[cur])
                .map_err(|e| self.ir_err(loc, e))?;
        }
        Ok(Value::Tensor(cur))
    }

    fn slice(
        &mut self,
        t: ValueId,
        axis: usize,
        start: Dim,
        end: Dim,
        step: i64,
        loc: Loc,
    ) -> R<ValueId> {
        let dim = self.lower.ty(t).shape[axis].clone();
        if let (Some(s), Some(e), Some(d)) = (start.as_const(), end.as_const(), dim.as_const()) {
            if s < 0 || e > d || s > e {
                return Err(self.err(
                    "shape::index",
                    loc,
                    format!("slice {s}:{e} is out of range for an axis of {d}"),
                ));
            }
        }
        self.lower
            .node(
                Op::Slice {
                    axis,
                    start,
                    end,
                    step,
                },
                &[t],
            )
            .map_err(|e| self.ir_err(loc, e))
    }

    // ----- calls --------------------------------------------------------------------------------

    fn call(
        &mut self,
        file: FileId,
        callee: &ast::Ident,
        args: &[ast::Arg],
        label: Option<&ast::Ident>,
        env: &mut Env,
        loc: Loc,
    ) -> R<Value> {
        let mut vals = Vec::with_capacity(args.len());
        for a in args {
            let value = self.eval(file, &a.value, env)?;
            vals.push(ArgVal {
                name: a.name.as_ref().map(|n| n.name.clone()),
                value,
                loc: Loc { file, span: a.span },
            });
        }
        let name = callee.name.as_str();
        if name == "model" {
            return self.call_model(vals, env, loc);
        }
        if let Some(item) = self.ws.lookup_item(name) {
            return self.call_item(item, vals, label, loc);
        }
        if builtins::is_builtin(name) {
            if let Some(l) = label {
                return Err(self.err(
                    "sema::label_on_builtin",
                    Loc { file, span: l.span },
                    format!("`{name}` is a primitive and has no parameters to label"),
                ));
            }
            return builtins::call(self, name, vals, loc);
        }
        let mut e = self.err(
            "sema::unknown_function",
            Loc {
                file,
                span: callee.span,
            },
            format!("unknown function `{name}`"),
        );
        e.label = "not defined".into();
        let cands: Vec<&str> = self
            .ws
            .item_names()
            .chain(builtins::BUILTINS.iter().map(|b| b.name))
            .collect();
        e.help = did_you_mean(name, cands).map(|s| format!("did you mean `{s}`?"));
        Err(e)
    }

    fn call_model(&mut self, args: Vec<ArgVal>, env: &Env, loc: Loc) -> R<Value> {
        if env.kind != BlockKind::Objective {
            return Err(self.err(
                "sema::model_outside_objective",
                loc,
                "`model(...)` can only be called in an objective",
            ));
        }
        let Some(binding) = self.model.clone() else {
            return Err(self.err("sema::no_model", loc, "no model is bound to this objective"));
        };
        if self.model_called {
            return Err(self.err_help(
                "sema::model_called_twice",
                loc,
                "the objective calls `model(...)` twice",
                "call the model once and reuse its output",
            ));
        }
        self.model_called = true;
        let mut hp = binding.hparams.clone();
        let mut inputs = Vec::new();
        for a in args {
            match a.name {
                None => inputs.push((a.value, a.loc)),
                Some(n) => {
                    hp.retain(|(k, _)| *k != n);
                    hp.push((n, a.value));
                }
            }
        }
        let (mf, mi) = binding.item;
        let mname = self.ws.asts[mf].items[mi].name().name.clone();
        self.stack.push(Frame {
            call: loc,
            callee: mname,
        });
        let r = self.run_model(binding.item, &hp, inputs, loc, false);
        self.stack.pop();
        let out = r?;
        if let Value::Tensor(t) = out {
            self.logits = Some(t);
        }
        Ok(out)
    }

    pub fn call_item(
        &mut self,
        item: (FileId, usize),
        args: Vec<ArgVal>,
        label: Option<&ast::Ident>,
        loc: Loc,
    ) -> R<Value> {
        let (file, idx) = item;
        let it = &self.ws.asts[file].items[idx];
        if self.stack.len() >= MAX_CALL_DEPTH {
            return Err(self.err_help(
                "sema::recursion",
                loc,
                format!(
                    "calls nest deeper than {MAX_CALL_DEPTH} levels (at `{}`)",
                    it.name().name
                ),
                "a block may not call itself, directly or through others",
            ));
        }
        match it {
            Item::Fn(f) => {
                if let Some(l) = label {
                    return Err(self.err(
                        "sema::label_on_fn",
                        Loc {
                            file: loc.file,
                            span: l.span,
                        },
                        format!("`{}` is a `fn` and has no parameters to label", f.name.name),
                    ));
                }
                self.stack.push(Frame {
                    call: loc,
                    callee: f.name.name.clone(),
                });
                let r = (|| {
                    let mut env = Env::new(BlockKind::Block, false);
                    self.bind_params(file, &f.params, &args, &mut env, loc, &f.name.name)?;
                    self.eval(file, &f.body, &mut env)
                })();
                self.stack.pop();
                r
            }
            Item::Block(b) if b.kind == BlockKind::Block => {
                let scope = match label {
                    Some(l) => l.name.clone(),
                    None => self.default_label(&b.name.name),
                };
                self.stack.push(Frame {
                    call: loc,
                    callee: b.name.name.clone(),
                });
                self.push_scope(scope);
                let r = (|| {
                    let mut env = Env::new(BlockKind::Block, false);
                    self.bind_params(file, &b.params, &args, &mut env, loc, &b.name.name)?;
                    self.exec_body(file, &b.body, &mut env)
                })();
                self.pop_scope();
                self.stack.pop();
                r
            }
            Item::Block(b) => Err(self.err_help(
                "sema::not_callable",
                loc,
                format!(
                    "`{}` is a {} and cannot be called from a block",
                    b.name.name,
                    b.kind.keyword()
                ),
                "select a model with a `config` and pair it with an objective in the run config",
            )),
            Item::Config(c) => Err(self.err(
                "sema::not_callable",
                loc,
                format!("`{}` is a config, not a function", c.name.name),
            )),
            Item::Plan(p) => Err(self.err(
                "sema::not_callable",
                loc,
                format!("`{}` is a plan, not a function", p.name.name),
            )),
            Item::Hf(h) => Err(self.err(
                "sema::not_callable",
                loc,
                format!("`{}` is a Hugging Face layout, not a function", h.name.name),
            )),
        }
    }

    pub fn next_rng_stream(&mut self) -> u64 {
        self.rng_stream += 1;
        self.rng_stream
    }
}

fn is_numeric(v: &Value) -> bool {
    matches!(
        v,
        Value::Int(_) | Value::Float(_) | Value::Bool(_) | Value::Tensor(_)
    )
}

#[cold]
fn unreachable_binary() -> ! {
    unreachable!("and/or/eq are handled before numeric dispatch")
}

fn param_list(params: &[ast::ParamDecl]) -> String {
    params
        .iter()
        .map(|p| {
            if p.default.is_some() {
                format!("{}?", p.name.name)
            } else {
                p.name.name.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn type_text(ty: &ast::TensorType, text: &str) -> String {
    text.get(ty.span.start..ty.span.end)
        .unwrap_or("?")
        .to_string()
}

/// Names an expression reads (for introducing symbolic dims of root inputs).
pub fn free_names(e: &Expr, out: &mut Vec<String>) {
    match &e.kind {
        ExprKind::Name(id) => out.push(id.name.clone()),
        ExprKind::Binary { lhs, rhs, .. } => {
            free_names(lhs, out);
            free_names(rhs, out);
        }
        ExprKind::Unary { operand, .. } | ExprKind::Paren(operand) => free_names(operand, out),
        _ => {}
    }
}
