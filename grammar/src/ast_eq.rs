//! Structural equality of syntax trees, ignoring where things were written.
//!
//! The formatter must preserve meaning: `parse(format(x))` must equal `parse(x)` except for byte
//! offsets. Rather than a hand-written equality that must be kept in step with every AST field,
//! this module zeroes every span of a copy, after which derived `PartialEq` does the comparison
//! (and a test failure prints an ordinary `Debug` diff).

use crate::ast::*;

/// A copy of `file` with every span set to `0..0`. Comments keep their text.
pub fn without_spans(file: &File) -> File {
    let mut f = file.clone();
    clear_file(&mut f);
    f
}

/// A copy of `expr` with every span set to `0..0`.
pub fn expr_without_spans(expr: &Expr) -> Expr {
    let mut e = expr.clone();
    clear_expr(&mut e);
    e
}

fn z(span: &mut Span) {
    *span = Span::default();
}

fn clear_file(f: &mut File) {
    for item in &mut f.items {
        clear_item(item);
    }
    for c in &mut f.comments {
        z(&mut c.span);
    }
}

fn clear_item(item: &mut Item) {
    match item {
        Item::Fn(FnDef {
            name,
            params,
            body,
            span,
        }) => {
            z(&mut name.span);
            params.iter_mut().for_each(clear_param);
            clear_expr(body);
            z(span);
        }
        Item::Block(BlockDef {
            kind: _,
            name,
            params,
            body,
            span,
        }) => {
            z(&mut name.span);
            params.iter_mut().for_each(clear_param);
            body.iter_mut().for_each(clear_stmt);
            z(span);
        }
        Item::Config(ConfigDef {
            name,
            base,
            args,
            span,
        }) => {
            z(&mut name.span);
            z(&mut base.span);
            args.iter_mut().for_each(clear_arg);
            z(span);
        }
        Item::Plan(PlanDef {
            name,
            target,
            entries,
            span,
        }) => {
            z(&mut name.span);
            z(&mut target.span);
            for PlanEntry { key, value, span } in entries {
                z(&mut key.span);
                clear_expr(value);
                z(span);
            }
            z(span);
        }
        Item::Hf(HfDef {
            name,
            target,
            entries,
            span,
        }) => {
            z(&mut name.span);
            z(&mut target.span);
            for HfEntry {
                key,
                subject,
                values,
                span,
            } in entries
            {
                z(&mut key.span);
                match subject {
                    None => {}
                    Some(HfSubject::Name(n)) => z(&mut n.span),
                    Some(HfSubject::Str(_, s)) => z(s),
                }
                values.iter_mut().for_each(clear_expr);
                z(span);
            }
            z(span);
        }
    }
}

fn clear_param(p: &mut ParamDecl) {
    z(&mut p.name.span);
    if let Some(ty) = &mut p.ty {
        clear_type(ty);
    }
    if let Some(d) = &mut p.default {
        clear_expr(d);
    }
    z(&mut p.span);
}

fn clear_type(t: &mut TensorType) {
    if let Some(d) = &mut t.dtype {
        z(&mut d.span);
    }
    for dim in &mut t.dims {
        match dim {
            DimPat::Ellipsis(s) => z(s),
            DimPat::Expr(e) => clear_expr(e),
        }
    }
    z(&mut t.span);
}

fn clear_stmt(s: &mut Stmt) {
    match s {
        Stmt::Input { name, ty, span } => {
            z(&mut name.span);
            clear_type(ty);
            z(span);
        }
        Stmt::Param {
            name,
            ty,
            init,
            span,
        } => {
            z(&mut name.span);
            clear_type(ty);
            clear_expr(init);
            z(span);
        }
        Stmt::Assign {
            target,
            value,
            span,
        } => {
            z(&mut target.span);
            clear_expr(value);
            z(span);
        }
        Stmt::Return { value, span } => {
            clear_expr(value);
            z(span);
        }
        Stmt::Repeat {
            var,
            count,
            label,
            body,
            span,
        } => {
            if let Some(v) = var {
                z(&mut v.span);
            }
            clear_expr(count);
            if let Some(l) = label {
                z(&mut l.span);
            }
            body.iter_mut().for_each(clear_stmt);
            z(span);
        }
        Stmt::If {
            cond,
            then_body,
            else_body,
            span,
        } => {
            clear_expr(cond);
            then_body.iter_mut().for_each(clear_stmt);
            if let Some(e) = else_body {
                e.iter_mut().for_each(clear_stmt);
            }
            z(span);
        }
        Stmt::Assert {
            cond,
            message: _,
            span,
        } => {
            clear_expr(cond);
            z(span);
        }
        Stmt::Data { call, span } => {
            clear_expr(call);
            z(span);
        }
    }
}

fn clear_arg(a: &mut Arg) {
    if let Some(n) = &mut a.name {
        z(&mut n.span);
    }
    clear_expr(&mut a.value);
    z(&mut a.span);
}

fn clear_expr(e: &mut Expr) {
    z(&mut e.span);
    match &mut e.kind {
        ExprKind::Int(_)
        | ExprKind::Float(..)
        | ExprKind::Bool(_)
        | ExprKind::Str(_)
        | ExprKind::None => {}
        ExprKind::Name(id) => z(&mut id.span),
        ExprKind::List(items) => items.iter_mut().for_each(clear_expr),
        ExprKind::Unary { op: _, operand } => clear_expr(operand),
        ExprKind::Binary { op: _, lhs, rhs } => {
            clear_expr(lhs);
            clear_expr(rhs);
        }
        ExprKind::Call {
            callee,
            args,
            label,
        } => {
            z(&mut callee.span);
            args.iter_mut().for_each(clear_arg);
            if let Some(l) = label {
                z(&mut l.span);
            }
        }
        ExprKind::Index { base, items } => {
            clear_expr(base);
            for item in items {
                match item {
                    IndexItem::Expr(e) => clear_expr(e),
                    IndexItem::Slice {
                        start,
                        end,
                        step,
                        span,
                    } => {
                        for part in [start, end, step].into_iter().flatten() {
                            clear_expr(part);
                        }
                        z(span);
                    }
                    IndexItem::Ellipsis(s) => z(s),
                }
            }
        }
        ExprKind::Member { base, name } => {
            clear_expr(base);
            z(&mut name.span);
        }
        ExprKind::IfElse {
            cond,
            then_expr,
            else_expr,
        } => {
            clear_expr(cond);
            clear_expr(then_expr);
            clear_expr(else_expr);
        }
        ExprKind::Paren(inner) => clear_expr(inner),
    }
}
