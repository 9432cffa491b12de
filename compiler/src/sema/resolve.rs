//! The static pass over every item of a file, instantiated or not: unknown names and functions
//! (with "did you mean"), argument names and counts at direct calls, `model(...)` and `input`
//! placement, recursion between items, and unused values (warnings).
//!
//! It does not know shapes or values: `eval` checks those when a config is instantiated.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use kiln_grammar::ast::{self, BlockKind, Expr, ExprKind, IndexItem, Item, Stmt};
use miette::Severity;

use super::builtins;
use super::diag::{did_you_mean, FileId, Loc, SemaDiagnostic};
use super::Workspace;

const INITS: &[&str] = &["normal", "uniform", "constant", "zeros", "ones"];

struct Scope {
    defined: BTreeSet<String>,
    /// Locals assigned in the body: name → first assignment.
    assigned: BTreeMap<String, Loc>,
    read: BTreeSet<String>,
    kind: BlockKind,
}

struct Resolver<'w> {
    ws: &'w Workspace,
    file: FileId,
    out: Vec<SemaDiagnostic>,
    /// Items called from each item (for recursion), with the first call's location.
    calls: Vec<(String, Loc)>,
}

pub fn resolve_file(ws: &Workspace, file: FileId) -> Vec<SemaDiagnostic> {
    let mut r = Resolver {
        ws,
        file,
        out: Vec::new(),
        calls: Vec::new(),
    };
    let mut graph: HashMap<String, Vec<(String, Loc)>> = HashMap::new();
    for item in &ws.asts[file].items {
        r.calls.clear();
        match item {
            Item::Fn(f) => {
                let mut sc = r.scope_for(&f.params, BlockKind::Block);
                r.params(&f.params, &mut sc);
                r.expr(&f.body, &mut sc);
            }
            Item::Block(b) => {
                let mut sc = r.scope_for(&b.params, b.kind);
                r.params(&b.params, &mut sc);
                r.stmts(&b.body, &mut sc);
                for (name, loc) in &sc.assigned {
                    if !sc.read.contains(name) && !name.starts_with('_') {
                        let mut d = ws.simple_diag(
                            "sema::unused",
                            *loc,
                            format!("value `{name}` is never used"),
                        );
                        d.severity = Severity::Warning;
                        d.labels[0].text = "assigned here".into();
                        d.help = Some(format!("remove it, or name it `_{name}`"));
                        r.out.push(d);
                    }
                }
            }
            Item::Config(c) => {
                match ws.lookup_item(&c.base.name) {
                    Some(it)
                        if matches!(
                            ws.item(it),
                            Item::Config(_)
                                | Item::Block(ast::BlockDef {
                                    kind: BlockKind::Model,
                                    ..
                                })
                        ) =>
                    {
                        if let Item::Block(m) = ws.item(it) {
                            for a in &c.args {
                                if let Some(n) = &a.name {
                                    if !m.params.iter().any(|p| p.name.name == n.name) {
                                        let mut d = ws.simple_diag(
                                            "sema::unknown_hparam",
                                            Loc { file, span: n.span },
                                            format!(
                                                "model `{}` has no hyperparameter `{}`",
                                                m.name.name, n.name
                                            ),
                                        );
                                        d.help = did_you_mean(
                                            &n.name,
                                            m.params.iter().map(|p| p.name.name.as_str()),
                                        )
                                        .map(|s| format!("did you mean `{s}`?"));
                                        r.out.push(d);
                                    }
                                }
                            }
                        }
                    }
                    Some(_) => r.out.push(ws.simple_diag(
                        "sema::not_a_model",
                        Loc {
                            file,
                            span: c.base.span,
                        },
                        format!("`{}` is not a model or config", c.base.name),
                    )),
                    None => {
                        let mut d = ws.simple_diag(
                            "sema::unknown_config",
                            Loc {
                                file,
                                span: c.base.span,
                            },
                            format!("unknown model or config `{}`", c.base.name),
                        );
                        d.help = did_you_mean(&c.base.name, ws.item_names())
                            .map(|s| format!("did you mean `{s}`?"));
                        r.out.push(d);
                    }
                }
                let mut sc = r.scope_for(&[], BlockKind::Block);
                for a in &c.args {
                    r.expr(&a.value, &mut sc);
                }
            }
            Item::Plan(_) | Item::Hf(_) => {}
        }
        graph.insert(item.name().name.clone(), r.calls.clone());
    }
    r.recursion(&graph);
    r.out
}

impl<'w> Resolver<'w> {
    fn loc(&self, span: ast::Span) -> Loc {
        Loc {
            file: self.file,
            span,
        }
    }

    fn scope_for(&self, _params: &[ast::ParamDecl], kind: BlockKind) -> Scope {
        Scope {
            defined: BTreeSet::new(),
            assigned: BTreeMap::new(),
            read: BTreeSet::new(),
            kind,
        }
    }

    fn params(&mut self, params: &[ast::ParamDecl], sc: &mut Scope) {
        let mut seen = BTreeSet::new();
        for p in params {
            if !seen.insert(p.name.name.clone()) {
                self.out.push(self.ws.simple_diag(
                    "sema::duplicate_parameter",
                    self.loc(p.name.span),
                    format!("parameter `{}` is declared twice", p.name.name),
                ));
            }
        }
        // Dim names in type patterns are bound by matching; parameters are visible to later
        // defaults (and, since every given argument is bound first, to earlier ones as well).
        for p in params {
            sc.defined.insert(p.name.name.clone());
            if let Some(t) = &p.ty {
                for d in &t.dims {
                    if let ast::DimPat::Expr(e) = d {
                        let mut names = Vec::new();
                        super::eval::free_names(e, &mut names);
                        sc.defined.extend(names);
                    }
                }
            }
        }
        for p in params {
            if let Some(d) = &p.default {
                self.expr(d, sc);
            }
        }
    }

    fn stmts(&mut self, stmts: &[Stmt], sc: &mut Scope) {
        for s in stmts {
            self.stmt(s, sc);
        }
    }

    fn stmt(&mut self, s: &Stmt, sc: &mut Scope) {
        match s {
            Stmt::Assign { target, value, .. } => {
                self.expr(value, sc);
                sc.defined.insert(target.name.clone());
                sc.assigned
                    .entry(target.name.clone())
                    .or_insert(self.loc(target.span));
            }
            Stmt::Return { value, .. } => self.expr(value, sc),
            Stmt::If {
                cond,
                then_body,
                else_body,
                ..
            } => {
                self.expr(cond, sc);
                self.stmts(then_body, sc);
                if let Some(e) = else_body {
                    self.stmts(e, sc);
                }
            }
            Stmt::Repeat {
                var, count, body, ..
            } => {
                self.expr(count, sc);
                if let Some(v) = var {
                    sc.defined.insert(v.name.clone());
                }
                self.stmts(body, sc);
            }
            Stmt::Assert { cond, .. } => self.expr(cond, sc),
            Stmt::Input { name, ty, span } => {
                if sc.kind == BlockKind::Block {
                    let mut d = self.ws.simple_diag(
                        "sema::input_in_block",
                        self.loc(*span),
                        "`input` declares data of a model or objective, not of a block".into(),
                    );
                    d.help = Some("pass the tensor to the block as an argument".into());
                    self.out.push(d);
                }
                for d in &ty.dims {
                    if let ast::DimPat::Expr(e) = d {
                        let mut names = Vec::new();
                        super::eval::free_names(e, &mut names);
                        sc.defined.extend(names);
                    }
                }
                sc.defined.insert(name.name.clone());
            }
            Stmt::Param {
                name,
                ty,
                init,
                span,
            } => {
                if sc.kind == BlockKind::Objective {
                    self.out.push(self.ws.simple_diag(
                        "sema::param_in_objective",
                        self.loc(*span),
                        "objectives have no parameters".into(),
                    ));
                }
                for d in &ty.dims {
                    if let ast::DimPat::Expr(e) = d {
                        self.expr(e, sc);
                    }
                }
                match &init.kind {
                    ExprKind::Name(id) if INITS.contains(&id.name.as_str()) => {}
                    ExprKind::Call { callee, args, .. }
                        if INITS.contains(&callee.name.as_str()) =>
                    {
                        for a in args {
                            self.expr(&a.value, sc);
                        }
                    }
                    _ => {
                        let mut d = self.ws.simple_diag(
                            "sema::bad_init",
                            self.loc(init.span),
                            "a parameter's initialiser must be `normal(std)`, `uniform(low, high)`, `constant(v)`, `zeros` or `ones`".into(),
                        );
                        d.help = Some("e.g. `param w: [d, out] = normal(0.02)`".into());
                        self.out.push(d);
                    }
                }
                sc.defined.insert(name.name.clone());
            }
            Stmt::Data { call, span } => {
                if sc.kind != BlockKind::Objective {
                    self.out.push(self.ws.simple_diag(
                        "sema::data_outside_objective",
                        self.loc(*span),
                        "`data` transforms belong in an `objective`".into(),
                    ));
                }
                if let ExprKind::Call { args, .. } = &call.kind {
                    for a in args {
                        self.expr(&a.value, sc);
                    }
                }
            }
        }
    }

    fn expr(&mut self, e: &Expr, sc: &mut Scope) {
        match &e.kind {
            ExprKind::Int(_)
            | ExprKind::Float(..)
            | ExprKind::Bool(_)
            | ExprKind::Str(_)
            | ExprKind::None => {}
            ExprKind::Name(id) => {
                sc.read.insert(id.name.clone());
                if !sc.defined.contains(&id.name) && !builtins::is_constant(&id.name) {
                    let mut d = self.ws.simple_diag(
                        "sema::unknown_name",
                        self.loc(id.span),
                        format!("unknown name `{}`", id.name),
                    );
                    d.labels[0].text = "not defined here".into();
                    let cands: Vec<&str> = sc
                        .defined
                        .iter()
                        .map(|s| s.as_str())
                        .chain(builtins::CONSTANTS.iter().copied())
                        .collect();
                    d.help = did_you_mean(&id.name, cands).map(|s| format!("did you mean `{s}`?"));
                    if d.help.is_none()
                        && (self.ws.lookup_item(&id.name).is_some()
                            || builtins::is_builtin(&id.name))
                    {
                        d.help = Some(format!(
                            "`{}` is a function: call it with `{}(...)`",
                            id.name, id.name
                        ));
                    }
                    self.out.push(d);
                }
            }
            ExprKind::List(xs) => {
                for x in xs {
                    self.expr(x, sc);
                }
            }
            ExprKind::Unary { operand, .. } | ExprKind::Paren(operand) => self.expr(operand, sc),
            ExprKind::Binary { lhs, rhs, .. } => {
                self.expr(lhs, sc);
                self.expr(rhs, sc);
            }
            ExprKind::IfElse {
                cond,
                then_expr,
                else_expr,
            } => {
                self.expr(cond, sc);
                self.expr(then_expr, sc);
                self.expr(else_expr, sc);
            }
            ExprKind::Index { base, items } => {
                self.expr(base, sc);
                for it in items {
                    match it {
                        IndexItem::Expr(x) => self.expr(x, sc),
                        IndexItem::Slice {
                            start, end, step, ..
                        } => {
                            for x in [start, end, step].into_iter().flatten() {
                                self.expr(x, sc);
                            }
                        }
                        IndexItem::Ellipsis(_) => {}
                    }
                }
            }
            ExprKind::Member { base, .. } => self.expr(base, sc),
            ExprKind::Call { callee, args, .. } => {
                for a in args {
                    self.expr(&a.value, sc);
                }
                self.check_call(callee, args, sc, e);
            }
        }
    }

    fn check_call(&mut self, callee: &ast::Ident, args: &[ast::Arg], sc: &Scope, call: &Expr) {
        let name = callee.name.as_str();
        if name == "model" {
            if sc.kind != BlockKind::Objective {
                self.out.push(self.ws.simple_diag(
                    "sema::model_outside_objective",
                    self.loc(callee.span),
                    "`model(...)` can only be called in an objective".into(),
                ));
            }
            return;
        }
        let params: Vec<(String, bool)> = if let Some(it) = self.ws.lookup_item(name) {
            self.calls.push((name.to_string(), self.loc(call.span)));
            match self.ws.item(it) {
                Item::Fn(f) => f
                    .params
                    .iter()
                    .map(|p| (p.name.name.clone(), p.default.is_none()))
                    .collect(),
                Item::Block(b) if b.kind == BlockKind::Block => b
                    .params
                    .iter()
                    .map(|p| (p.name.name.clone(), p.default.is_none()))
                    .collect(),
                other => {
                    let kind = match other {
                        Item::Block(b) => b.kind.keyword(),
                        Item::Config(_) => "config",
                        _ => "plan",
                    };
                    self.out.push(self.ws.simple_diag(
                        "sema::not_callable",
                        self.loc(callee.span),
                        format!("`{name}` is a {kind} and cannot be called"),
                    ));
                    return;
                }
            }
        } else if let Some(b) = builtins::builtin(name) {
            b.params
                .iter()
                .map(|p| (p.trim_end_matches('?').to_string(), !p.ends_with('?')))
                .collect()
        } else {
            let mut d = self.ws.simple_diag(
                "sema::unknown_function",
                self.loc(callee.span),
                format!("unknown function `{name}`"),
            );
            d.labels[0].text = "not defined".into();
            let cands: Vec<&str> = self
                .ws
                .item_names()
                .chain(builtins::BUILTINS.iter().map(|b| b.name))
                .collect();
            d.help = did_you_mean(name, cands).map(|s| format!("did you mean `{s}`?"));
            self.out.push(d);
            return;
        };
        let list = params
            .iter()
            .map(|(n, req)| if *req { n.clone() } else { format!("{n}?") })
            .collect::<Vec<_>>()
            .join(", ");
        let positional = args.iter().filter(|a| a.name.is_none()).count();
        if positional > params.len() {
            let mut d = self.ws.simple_diag(
                "sema::too_many_args",
                self.loc(call.span),
                format!(
                    "`{name}` takes {} argument(s), {positional} given",
                    params.len()
                ),
            );
            d.help = Some(format!("`{name}` takes: {list}"));
            self.out.push(d);
            return;
        }
        let mut filled: Vec<bool> = (0..params.len()).map(|i| i < positional).collect();
        for a in args {
            if let Some(n) = &a.name {
                match params.iter().position(|(p, _)| *p == n.name) {
                    Some(i) if filled[i] => self.out.push(self.ws.simple_diag(
                        "sema::duplicate_argument",
                        self.loc(a.span),
                        format!("argument `{}` of `{name}` is given twice", n.name),
                    )),
                    Some(i) => filled[i] = true,
                    None => {
                        let mut d = self.ws.simple_diag(
                            "sema::unknown_argument",
                            self.loc(n.span),
                            format!("`{name}` has no parameter `{}`", n.name),
                        );
                        d.help = Some(
                            match did_you_mean(&n.name, params.iter().map(|(p, _)| p.as_str())) {
                                Some(s) => format!("did you mean `{s}`?"),
                                None => format!("`{name}` takes: {list}"),
                            },
                        );
                        self.out.push(d);
                    }
                }
            }
        }
        for (i, (p, required)) in params.iter().enumerate() {
            if *required && !filled[i] {
                let mut d = self.ws.simple_diag(
                    "sema::missing_argument",
                    self.loc(call.span),
                    format!("`{name}` needs an argument for `{p}`"),
                );
                d.help = Some(format!("`{name}` takes: {list}"));
                self.out.push(d);
            }
        }
    }

    /// Items of this file that reach themselves through calls.
    fn recursion(&mut self, graph: &HashMap<String, Vec<(String, Loc)>>) {
        let mut names: Vec<&String> = graph.keys().collect();
        names.sort();
        let mut reported = BTreeSet::new();
        for start in names {
            // DFS from `start` looking for a path back to it.
            let mut stack: Vec<(String, Vec<String>, Option<Loc>)> =
                vec![(start.clone(), vec![start.clone()], None)];
            let mut seen = BTreeSet::new();
            while let Some((cur, path, _)) = stack.pop() {
                let Some(edges) = graph.get(&cur) else {
                    continue;
                };
                for (callee, loc) in edges {
                    if callee == start {
                        if !reported.contains(start) {
                            let mut cycle = path.clone();
                            cycle.push(start.clone());
                            // One report per cycle, at the alphabetically first member.
                            reported.extend(cycle.iter().cloned());
                            let mut d = self.ws.simple_diag(
                                "sema::recursion",
                                *loc,
                                format!("`{start}` calls itself: {}", cycle.join(" → ")),
                            );
                            d.labels[0].text = "this call closes the cycle".into();
                            d.help = Some("Kiln expands blocks at compile time, so they cannot recurse; use `repeat`".into());
                            self.out.push(d);
                        }
                        continue;
                    }
                    if seen.insert(callee.clone()) {
                        let mut p = path.clone();
                        p.push(callee.clone());
                        stack.push((callee.clone(), p, Some(*loc)));
                    }
                }
            }
        }
    }
}
