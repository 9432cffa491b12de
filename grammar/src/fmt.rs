//! The canonical layout of a `.kiln` file (`kiln fmt`).
//!
//! The printer works from the AST and consults the source only for what the AST does not keep:
//! where comments sit relative to code, where the user left blank lines, the brackets of bodies and
//! lists (to place comments inside or outside them) and how integer literals were spelled
//! (`50_257`).
//!
//! Layout rules:
//! - 4-space indentation; one statement, plan entry or item header per line; `;` separators are
//!   dropped. A line longer than 100 columns breaks its outermost bracketed list (arguments,
//!   parameters, list literal) one element per line with a trailing comma, Black-style
//!   (`doc.rs`); a `fn` body or an assigned value without such a list moves to the next line,
//!   indented, instead. Operators and index brackets never break.
//! - One space around every binary operator, `**` included (`x ** 3`, `hd ** -0.5`); none after
//!   unary `-` (but `- -x`); `not x`; `name = value` for named arguments and defaults; `a:b:c`
//!   slices without spaces; `, ` between list elements; no trailing comma on one line.
//! - Parentheses exactly as written (`Paren` nodes): none are added or removed. This is safe
//!   because every tree the parser builds already carries the parentheses it needs.
//! - Items are separated by one blank line, except that consecutive `fn` items, and consecutive
//!   `config` items, keep the user's choice (none or one). Inside bodies, a user's blank line
//!   between statements is kept (several become one); none is kept after `{` or before `}`.
//! - Comments keep their place: an own-line comment stays on its own line before the code that
//!   followed it; an end-of-line comment stays at the end of its line (two spaces, then `#`).
//!   Comments between the elements of a bracketed list (a hyperparameter's note in a `model`
//!   header, say) stay with their element, and force the list to break. Any other comment inside
//!   a statement (between operands, say) moves to its own line just before the statement.
//! - Empty bodies print as `{}` unless they hold a comment; the file ends with one newline.
//!
//! `format(parse(format(x)))` equals `format(x)`, and `parse(format(x))` equals `parse(x)` up to
//! spans (and up to the order of comments, when a statement has both kinds of inner comment):
//! both are tested on every example and fuzzed (`tests/fuzz.rs`).

use crate::ast::*;
use crate::doc::{render, Doc};

/// Lines longer than this break their outermost bracketed list, one element per line.
const WIDTH: usize = 100;

const INDENT: &str = "    ";

/// Formats a parsed file. `source` must be the text `file` was parsed from (it is used for comment
/// placement, blank lines and integer spelling; a mismatched source degrades layout, never panics).
pub fn format(file: &File, source: &str) -> String {
    let mut p = Printer::new(source, &file.comments);
    p.file(file);
    let mut out = p.out;
    let trimmed = out.trim_end().len();
    out.truncate(trimmed);
    if !out.is_empty() {
        out.push('\n');
    }
    out
}

/// Formats one expression on one line (no comments; integers as values).
pub fn format_expr(expr: &Expr) -> String {
    let mut p = Printer::new("", &[]);
    let doc = p.expr(expr);
    flat(&doc)
}

/// What was printed last at the top level, for the blank-line rule between items.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Last {
    Nothing,
    Comment,
    /// An item; `fn`s and `config`s may sit in tight groups of their own kind.
    Item(ItemKind),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ItemKind {
    Fn,
    Config,
    Other,
}

fn item_kind(item: &Item) -> ItemKind {
    match item {
        Item::Fn(_) => ItemKind::Fn,
        Item::Config(_) => ItemKind::Config,
        Item::Block(_) | Item::Plan(_) | Item::Hf(_) => ItemKind::Other,
    }
}

struct Printer<'a> {
    src: &'a str,
    comments: &'a [Comment],
    /// Comments printed, or claimed by a list whose layout will print them: each prints once.
    printed: Vec<bool>,
    /// Every comment before this index is printed.
    next: usize,
    out: String,
    /// Source offset just past the last printed statement, comment or brace.
    last_end: usize,
    /// Above zero while laying out something that stays on one line (index items, dims): lists
    /// there leave their comments to be hoisted before the statement.
    one_line: usize,
}

impl<'a> Printer<'a> {
    fn new(src: &'a str, comments: &'a [Comment]) -> Self {
        Printer {
            src,
            comments,
            printed: vec![false; comments.len()],
            next: 0,
            out: String::new(),
            last_end: 0,
            one_line: 0,
        }
    }

    fn indent(&mut self, level: usize) {
        for _ in 0..level {
            self.out.push_str(INDENT);
        }
    }

    /// Whether the source between `from` and `to` holds a line with nothing but whitespace.
    fn has_blank_line(&self, from: usize, to: usize) -> bool {
        let Some(text) = self.src.get(from..to) else {
            return false;
        };
        let segments: Vec<&str> = text.split('\n').collect();
        segments.len() > 2
            && segments[1..segments.len() - 1]
                .iter()
                .any(|s| s.trim().is_empty())
    }

    // ---- comments ----

    /// The first comment not printed yet.
    fn first_unprinted(&self) -> Option<(usize, &'a Comment)> {
        (self.next..self.comments.len())
            .find(|&i| !self.printed[i])
            .map(|i| (i, &self.comments[i]))
    }

    /// The first comment not printed yet, if it starts before `pos`.
    fn next_comment_before(&self, pos: usize) -> Option<(usize, &'a Comment)> {
        self.first_unprinted().filter(|(_, c)| c.span.start < pos)
    }

    fn mark_printed(&mut self, i: usize) {
        self.printed[i] = true;
        while self.next < self.printed.len() && self.printed[self.next] {
            self.next += 1;
        }
    }

    fn comment_line(&mut self, (i, c): (usize, &Comment), level: usize) {
        self.indent(level);
        self.out.push('#');
        self.out.push_str(&c.text);
        self.out.push('\n');
        self.last_end = self.last_end.max(c.span.end);
        self.mark_printed(i);
    }

    /// Own-line comments before `pos`, at `level`, keeping the user's blank lines between them
    /// (none before the first one when `*first`).
    fn own_line_comments(&mut self, pos: usize, level: usize, first: &mut bool) {
        while let Some(c) = self.next_comment_before(pos) {
            if !*first && self.has_blank_line(self.last_end, c.1.span.start) {
                self.out.push('\n');
            }
            self.comment_line(c, level);
            *first = false;
        }
    }

    /// Comments inside a construct that is printed on one line move before it, without blank lines.
    fn hoist_comments(&mut self, pos: usize, level: usize) {
        while let Some(c) = self.next_comment_before(pos) {
            self.comment_line(c, level);
        }
    }

    /// Whether only spaces, tabs and the given separators lie between `from` and `to`.
    fn same_line(&self, from: usize, to: usize, separators: &[char]) -> bool {
        from <= to
            && self.src.get(from..to).is_some_and(|gap| {
                gap.chars()
                    .all(|ch| matches!(ch, ' ' | '\t' | '\r') || separators.contains(&ch))
            })
    }

    /// Ends the current line, taking the comment that followed `after` on the same source line.
    fn end_line(&mut self, after: usize) {
        self.last_end = self.last_end.max(after);
        if let Some((i, c)) = self.first_unprinted() {
            if self.same_line(after, c.span.start, &[';']) {
                self.out.push_str("  #");
                self.out.push_str(&c.text);
                self.last_end = c.span.end;
                self.mark_printed(i);
            }
        }
        self.out.push('\n');
    }

    // ---- source scanning (brackets of bodies and lists; strings and comments skipped) ----

    /// The first `c` at or after `from` outside strings and comments.
    fn find_char(&self, from: usize, c: u8) -> Option<usize> {
        let bytes = self.src.as_bytes();
        let mut i = from;
        while i < bytes.len() {
            match bytes[i] {
                b if b == c => return Some(i),
                b'"' => i = self.skip_string(i),
                b'#' => i = self.src[i..].find('\n').map_or(bytes.len(), |n| i + n),
                _ => i += 1,
            }
        }
        None
    }

    /// The offset just past the string starting at `i`.
    fn skip_string(&self, i: usize) -> usize {
        let bytes = self.src.as_bytes();
        let mut j = i + 1;
        while j < bytes.len() {
            match bytes[j] {
                b'"' | b'\n' => return j + 1,
                b'\\' => j += 2,
                _ => j += 1,
            }
        }
        bytes.len()
    }

    /// The bracket matching the one at `open` (any of `(`, `[`, `{`).
    fn matching(&self, open: usize) -> Option<usize> {
        let bytes = self.src.as_bytes();
        let mut depth = 0usize;
        let mut i = open;
        while i < bytes.len() {
            match bytes[i] {
                b'(' | b'[' | b'{' => depth += 1,
                b')' | b']' | b'}' => {
                    depth = depth.checked_sub(1)?;
                    if depth == 0 {
                        return Some(i);
                    }
                }
                b'"' => {
                    i = self.skip_string(i);
                    continue;
                }
                b'#' => {
                    i = self.src[i..].find('\n').map_or(bytes.len(), |n| i + n);
                    continue;
                }
                _ => {}
            }
            i += 1;
        }
        None
    }

    /// The braces of the body that follows `from` inside a construct ending at `end`.
    fn braces(&self, from: usize, end: usize) -> (usize, usize) {
        let open = self
            .find_char(from, b'{')
            .filter(|&o| o < end)
            .unwrap_or(from);
        let close = self
            .matching(open)
            .unwrap_or(end.saturating_sub(1).max(open));
        (open, close)
    }

    /// The brackets of a list whose opening bracket `c` is the first one at or after `from`.
    fn list_brackets(&self, from: usize, c: u8) -> Option<(usize, usize)> {
        let open = self.find_char(from, c)?;
        Some((open, self.matching(open)?))
    }

    /// The first non-blank, non-comment offset at or after `from`.
    fn skip_trivia(&self, from: usize) -> usize {
        let bytes = self.src.as_bytes();
        let mut i = from;
        while i < bytes.len() {
            match bytes[i] {
                b' ' | b'\t' | b'\r' | b'\n' | b';' => i += 1,
                b'#' => i = self.src[i..].find('\n').map_or(bytes.len(), |n| i + n),
                _ => break,
            }
        }
        i
    }

    // ---- items ----

    fn file(&mut self, file: &File) {
        let mut last = Last::Nothing;
        for item in &file.items {
            let kind = item_kind(item);
            while let Some(c) = self.next_comment_before(item.span().start) {
                if self.blank_before(last, None, c.1.span.start) {
                    self.out.push('\n');
                }
                self.comment_line(c, 0);
                last = Last::Comment;
            }
            if self.blank_before(last, Some(kind), item.span().start) {
                self.out.push('\n');
            }
            self.item(item);
            last = Last::Item(kind);
        }
        let mut first = last == Last::Nothing;
        while let Some(c) = self.first_unprinted() {
            if !first && self.blank_before(last, None, c.1.span.start) {
                self.out.push('\n');
            }
            self.comment_line(c, 0);
            first = false;
            last = Last::Comment;
        }
    }

    /// The blank-line rule at the top level; `next` is the next item's kind, `None` for a comment.
    fn blank_before(&self, last: Last, next: Option<ItemKind>, start: usize) -> bool {
        let user = self.has_blank_line(self.last_end, start);
        match (last, next) {
            (Last::Nothing, _) => false,
            (Last::Comment, _) => user,
            (Last::Item(ItemKind::Other), _) => true,
            (Last::Item(prev), Some(next)) if prev != next => true,
            (Last::Item(_), _) => user,
        }
    }

    fn item(&mut self, item: &Item) {
        match item {
            Item::Fn(f) => {
                let params = self.params(&f.params, f.name.span.end);
                let line = Doc::Concat(vec![
                    Doc::text(format!("fn {}", f.name.name)),
                    params,
                    Doc::text(" ="),
                    self.value(&f.body),
                ]);
                self.simple_line(&line, f.span, 0);
            }
            Item::Config(c) => {
                let args = self.args(&c.args, c.base.span.end);
                let line = Doc::Concat(vec![
                    Doc::text(format!("config {} = {}", c.name.name, c.base.name)),
                    args,
                ]);
                self.simple_line(&line, c.span, 0);
            }
            Item::Block(b) => {
                let (open, close) = self.braces(b.name.span.end, b.span.end);
                let params = self.params(&b.params, b.name.span.end);
                let header = Doc::Concat(vec![
                    Doc::text(format!("{} {}", b.kind.keyword(), b.name.name)),
                    params,
                ]);
                self.hoist_comments(open, 0);
                self.block(header, &b.body, open, close, 0);
            }
            Item::Plan(p) => {
                let (open, close) = self.braces(p.target.span.end, p.span.end);
                self.hoist_comments(open, 0);
                let header = format!("plan {} for {}", p.name.name, p.target.name);
                if p.entries.is_empty() && self.next_comment_before(close).is_none() {
                    self.out.push_str(&header);
                    self.out.push_str(" {}");
                    self.end_line(close + 1);
                    return;
                }
                self.out.push_str(&header);
                self.out.push_str(" {");
                self.end_line(open + 1);
                let mut first = true;
                for e in &p.entries {
                    self.own_line_comments(e.span.start, 1, &mut first);
                    if !first && self.has_blank_line(self.last_end, e.span.start) {
                        self.out.push('\n');
                    }
                    first = false;
                    let line = Doc::Concat(vec![
                        Doc::text(format!("{} = ", e.key.name)),
                        self.expr(&e.value),
                    ]);
                    self.simple_line(&line, e.span, 1);
                }
                self.own_line_comments(close, 1, &mut first);
                self.out.push('}');
                self.end_line(close + 1);
            }
            Item::Hf(h) => {
                let (open, close) = self.braces(h.target.span.end, h.span.end);
                self.hoist_comments(open, 0);
                let header = format!("hf {} for {}", h.name.name, h.target.name);
                if h.entries.is_empty() && self.next_comment_before(close).is_none() {
                    self.out.push_str(&header);
                    self.out.push_str(" {}");
                    self.end_line(close + 1);
                    return;
                }
                self.out.push_str(&header);
                self.out.push_str(" {");
                self.end_line(open + 1);
                let mut first = true;
                for e in &h.entries {
                    self.own_line_comments(e.span.start, 1, &mut first);
                    if !first && self.has_blank_line(self.last_end, e.span.start) {
                        self.out.push('\n');
                    }
                    first = false;
                    let mut head = e.key.name.clone();
                    match &e.subject {
                        None => {}
                        Some(HfSubject::Name(n)) => {
                            head.push(' ');
                            head.push_str(&n.name);
                        }
                        Some(HfSubject::Str(text, _)) => {
                            head.push(' ');
                            write_string(text, &mut head);
                        }
                    }
                    head.push_str(" = ");
                    let mut parts = vec![Doc::text(head)];
                    for (n, v) in e.values.iter().enumerate() {
                        if n > 0 {
                            parts.push(Doc::text(", "));
                        }
                        parts.push(self.expr(v));
                    }
                    self.simple_line(&Doc::Concat(parts), e.span, 1);
                }
                self.own_line_comments(close, 1, &mut first);
                self.out.push('}');
                self.end_line(close + 1);
            }
        }
    }

    /// Prints `doc` at the current position, which is the start of a line at `level`.
    fn emit(&mut self, doc: &Doc, level: usize) {
        self.indent(level);
        self.out.push_str(&render(doc, level * INDENT.len(), WIDTH));
    }

    /// A header and its `{ body }`: `{}` when the body is empty and holds no comment.
    fn block(&mut self, header: Doc, stmts: &[Stmt], open: usize, close: usize, level: usize) {
        let empty = stmts.is_empty() && self.next_comment_before(close).is_none();
        let header = Doc::Concat(vec![header, Doc::text(if empty { " {}" } else { " {" })]);
        self.emit(&header, level);
        if !empty {
            self.body_open(stmts, open, close, level);
            self.indent(level);
            self.out.push('}');
        }
        self.end_line(close + 1);
    }

    /// The end of the header line and the statements, stopping before the closing `}`; comments
    /// before `comments_until` (at least the `}`) go inside the body.
    fn body_open(&mut self, stmts: &[Stmt], open: usize, comments_until: usize, level: usize) {
        self.end_line(open + 1);
        let mut first = true;
        for s in stmts {
            self.own_line_comments(s.span().start, level + 1, &mut first);
            if !first && self.has_blank_line(self.last_end, s.span().start) {
                self.out.push('\n');
            }
            first = false;
            self.stmt(s, level + 1);
        }
        self.own_line_comments(comments_until, level + 1, &mut first);
    }

    /// A parameter list whose `(` is the first one after `after`.
    fn params(&mut self, params: &[ParamDecl], after: usize) -> Doc {
        let mut items = Vec::new();
        for p in params {
            let mut parts = vec![Doc::text(p.name.name.clone())];
            if let Some(ty) = &p.ty {
                parts.push(Doc::text(": "));
                parts.push(self.tensor_type(ty));
            }
            if let Some(d) = &p.default {
                parts.push(Doc::text(" = "));
                parts.push(self.expr(d));
            }
            items.push((p.span, Doc::Concat(parts)));
        }
        let brackets = self.list_brackets(after, b'(');
        self.list("(", items, ")", brackets)
    }

    /// `open item, item close`, with the comments between the items kept beside them.
    /// `brackets` are the source offsets of the two brackets, when known.
    fn list(
        &mut self,
        open: &str,
        items: Vec<(Span, Doc)>,
        close: &str,
        brackets: Option<(usize, usize)>,
    ) -> Doc {
        let sane = brackets.filter(|&(o, c)| {
            o < c
                && items.first().is_none_or(|f| o < f.0.start)
                && items.last().is_none_or(|l| l.0.end <= c)
        });
        let Some((open_pos, close_pos)) = sane.filter(|_| self.one_line == 0) else {
            return Doc::bracketed(open, items.into_iter().map(|i| i.1).collect(), close);
        };
        // The comments of this list lie between its items: none inside an item's span.
        let between = |c: &Comment| {
            c.span.start > open_pos
                && c.span.start < close_pos
                && !items
                    .iter()
                    .any(|(s, _)| s.start <= c.span.start && c.span.start < s.end)
        };
        // Comments are in source order: look only at those inside the brackets.
        let lo = self
            .comments
            .partition_point(|c| c.span.start <= open_pos)
            .max(self.next);
        let hi = self
            .comments
            .partition_point(|c| c.span.start < close_pos)
            .max(lo);
        let mine: Vec<usize> = (lo..hi)
            .filter(|&i| !self.printed[i] && between(&self.comments[i]))
            .collect();
        if mine.is_empty() {
            return Doc::bracketed(open, items.into_iter().map(|i| i.1).collect(), close);
        }
        let mut lines: Vec<Doc> = Vec::new();
        let mut pending = mine.into_iter().peekable();
        for (span, doc) in items {
            // Own-line comments before the item.
            while let Some(&i) = pending.peek() {
                if self.comments[i].span.start >= span.start {
                    break;
                }
                lines.push(Doc::text(format!("#{}", self.comments[i].text)));
                self.mark_printed(i);
                pending.next();
            }
            let mut line = vec![doc, Doc::text(",")];
            // The comment right after the item (and its comma) on the same line.
            if let Some(&i) = pending.peek() {
                let c = &self.comments[i];
                if self.same_line(span.end, c.span.start, &[',']) {
                    line.push(Doc::text(format!("  #{}", c.text)));
                    self.mark_printed(i);
                    pending.next();
                }
            }
            lines.push(Doc::Concat(line));
        }
        // Comments after the last item.
        for i in pending {
            lines.push(Doc::text(format!("#{}", self.comments[i].text)));
            self.mark_printed(i);
        }
        let mut inner = Vec::new();
        for l in lines {
            inner.push(Doc::HardLine);
            inner.push(l);
        }
        Doc::Concat(vec![
            Doc::text(open),
            Doc::Indent(Box::new(Doc::Concat(inner))),
            Doc::HardLine,
            Doc::text(close),
        ])
    }

    /// Types stay on one line: their dims are short.
    fn tensor_type(&mut self, ty: &TensorType) -> Doc {
        self.one_line += 1;
        let mut s = String::new();
        if let Some(d) = &ty.dtype {
            s.push_str(&d.name);
        }
        s.push('[');
        for (i, dim) in ty.dims.iter().enumerate() {
            if i > 0 {
                s.push_str(", ");
            }
            match dim {
                DimPat::Ellipsis(_) => s.push_str("..."),
                DimPat::Expr(e) => {
                    let d = self.expr(e);
                    s.push_str(&flat(&d));
                }
            }
        }
        s.push(']');
        self.one_line -= 1;
        Doc::Text(s)
    }

    // ---- statements ----

    fn stmt(&mut self, s: &Stmt, level: usize) {
        fn t(s: impl Into<String>) -> Doc {
            Doc::text(s)
        }
        match s {
            Stmt::Input { name, ty, span } => {
                let line = Doc::Concat(vec![
                    t(format!("input {}: ", name.name)),
                    self.tensor_type(ty),
                ]);
                self.simple_line(&line, *span, level);
            }
            Stmt::Param {
                name,
                ty,
                init,
                span,
            } => {
                let line = Doc::Concat(vec![
                    t(format!("param {}: ", name.name)),
                    self.tensor_type(ty),
                    t(" ="),
                    self.value(init),
                ]);
                self.simple_line(&line, *span, level);
            }
            Stmt::Assign {
                target,
                value,
                span,
            } => {
                let line = Doc::Concat(vec![t(format!("{} =", target.name)), self.value(value)]);
                self.simple_line(&line, *span, level);
            }
            Stmt::Return { value, span } => {
                let line = Doc::Concat(vec![t("return "), self.expr(value)]);
                self.simple_line(&line, *span, level);
            }
            Stmt::Assert {
                cond,
                message,
                span,
            } => {
                let mut parts = vec![t("assert "), self.expr(cond)];
                if let Some(m) = message {
                    let mut quoted = String::from(", ");
                    write_string(m, &mut quoted);
                    parts.push(Doc::Text(quoted));
                }
                self.simple_line(&Doc::Concat(parts), *span, level);
            }
            Stmt::Data { call, span } => {
                let line = Doc::Concat(vec![t("data "), self.expr(call)]);
                self.simple_line(&line, *span, level);
            }
            Stmt::Repeat {
                var,
                count,
                label,
                body,
                span,
            } => {
                let header_end = label.as_ref().map_or(count.span.end, |l| l.span.end);
                let (open, close) = self.braces(header_end, span.end);
                let mut parts = vec![t("repeat ")];
                if let Some(v) = var {
                    parts.push(t(format!("{} in ", v.name)));
                }
                parts.push(self.expr(count));
                if let Some(l) = label {
                    parts.push(t(format!(" as {}", l.name)));
                }
                self.hoist_comments(open, level);
                self.block(Doc::Concat(parts), body, open, close, level);
            }
            Stmt::If { .. } => self.if_chain(s, level),
        }
    }

    /// A construct printed as one (possibly broken) line: its remaining inner comments first.
    fn simple_line(&mut self, line: &Doc, span: Span, level: usize) {
        self.hoist_comments(span.end, level);
        self.emit(line, level);
        self.end_line(span.end);
    }

    /// `if a { } else if b { } else { }`. An `else` whose body is a lone `if` written as `else if`
    /// prints as `else if`; written as `else { if .. }` it keeps its braces.
    fn if_chain(&mut self, s: &Stmt, level: usize) {
        let Stmt::If {
            cond,
            then_body,
            else_body,
            span,
        } = s
        else {
            return;
        };
        let (open, close) = self.braces(cond.span.end, span.end);
        let header = Doc::Concat(vec![Doc::text("if "), self.expr(cond)]);
        self.hoist_comments(open, level);
        if else_body.is_none() {
            self.block(header, then_body, open, close, level);
            return;
        }
        self.emit(&Doc::Concat(vec![header, Doc::text(" {")]), level);
        let (mut cur_then, mut cur_else, mut cur_open, mut cur_close, mut cur_end) =
            (then_body, else_body, open, close, span.end);
        loop {
            let Some(else_stmts) = cur_else else {
                self.body_open(cur_then, cur_open, cur_close, level);
                self.indent(level);
                self.out.push('}');
                self.end_line(cur_close + 1);
                return;
            };
            let after_else = self.skip_trivia(self.skip_trivia(cur_close + 1) + "else".len());
            let written_as_block = self.src.as_bytes().get(after_else) == Some(&b'{');
            match else_stmts.as_slice() {
                [Stmt::If {
                    cond: c2,
                    then_body: t2,
                    else_body: e2,
                    span: s2,
                }] if !written_as_block => {
                    let (open2, close2) = self.braces(c2.span.end, s2.end);
                    // Comments between this body's end and the next `{` stay inside this body.
                    self.body_open(cur_then, cur_open, open2.max(cur_close), level);
                    let line = Doc::Concat(vec![
                        Doc::text("} else if "),
                        self.expr(c2),
                        Doc::text(" {"),
                    ]);
                    self.emit(&line, level);
                    (cur_then, cur_else, cur_open, cur_close, cur_end) =
                        (t2, e2, open2, close2, s2.end);
                }
                _ => {
                    let else_open = self
                        .find_char(cur_close + 1, b'{')
                        .filter(|&o| o < cur_end)
                        .unwrap_or(cur_close);
                    let else_close = self
                        .matching(else_open)
                        .unwrap_or(cur_end.saturating_sub(1).max(else_open));
                    self.body_open(cur_then, cur_open, else_open.max(cur_close), level);
                    self.block(
                        Doc::text("} else"),
                        else_stmts,
                        else_open,
                        else_close,
                        level,
                    );
                    return;
                }
            }
        }
    }

    // ---- expressions ----

    /// The right side of `=`, after the `=`. A value with a bracketed list stays on the line and
    /// breaks inside its brackets when too long; a value without one moves to the next line,
    /// indented, when it does not fit after the `=`.
    fn value(&mut self, e: &Expr) -> Doc {
        let doc = self.expr(e);
        if has_bracketed_list(e) {
            Doc::Concat(vec![Doc::text(" "), doc])
        } else {
            Doc::Group(Box::new(Doc::Indent(Box::new(Doc::Concat(vec![
                Doc::Line,
                doc,
            ])))))
        }
    }

    /// An argument list whose `(` is the first one after `after`.
    fn args(&mut self, args: &[Arg], after: usize) -> Doc {
        let mut items = Vec::new();
        for a in args {
            let value = self.expr(&a.value);
            let doc = match &a.name {
                Some(n) => Doc::Concat(vec![Doc::text(format!("{} = ", n.name)), value]),
                None => value,
            };
            items.push((a.span, doc));
        }
        let brackets = self.list_brackets(after, b'(');
        self.list("(", items, ")", brackets)
    }

    fn expr(&mut self, e: &Expr) -> Doc {
        fn t(s: impl Into<String>) -> Doc {
            Doc::text(s)
        }
        match &e.kind {
            ExprKind::Int(v) => {
                // Keep the user's digit grouping (`50_257`) when the text still says the same.
                let text = self.src.get(e.span.start..e.span.end).filter(|s| {
                    s.bytes().all(|b| b.is_ascii_digit() || b == b'_')
                        && s.replace('_', "").parse::<i64>().ok() == Some(*v)
                });
                match text {
                    Some(s) => t(s),
                    None => t(v.to_string()),
                }
            }
            ExprKind::Float(v, text) if text.is_empty() => t(format!("{v:?}")),
            ExprKind::Float(_, text) => t(text.clone()),
            ExprKind::Bool(b) => t(if *b { "true" } else { "false" }),
            ExprKind::Str(s) => {
                let mut quoted = String::new();
                write_string(s, &mut quoted);
                Doc::Text(quoted)
            }
            ExprKind::None => t("none"),
            ExprKind::Name(id) => t(id.name.clone()),
            ExprKind::List(items) => {
                let docs = items.iter().map(|i| (i.span, self.expr(i))).collect();
                let brackets = self
                    .src
                    .as_bytes()
                    .get(e.span.start)
                    .filter(|&&b| b == b'[')
                    .and_then(|_| {
                        let close = self.matching(e.span.start)?;
                        Some((e.span.start, close))
                    });
                self.list("[", docs, "]", brackets)
            }
            ExprKind::Unary { op, operand } => {
                let double_minus = *op == UnaryOp::Neg
                    && matches!(
                        operand.kind,
                        ExprKind::Unary {
                            op: UnaryOp::Neg,
                            ..
                        }
                    );
                let sign = match op {
                    // `- -x`, not `--x`, which reads as a decrement.
                    UnaryOp::Neg if double_minus => "- ",
                    UnaryOp::Neg => "-",
                    UnaryOp::Not => "not ",
                };
                Doc::Concat(vec![t(sign), self.expr(operand)])
            }
            ExprKind::Binary { op, lhs, rhs } => Doc::Concat(vec![
                self.expr(lhs),
                t(format!(" {} ", op.symbol())),
                self.expr(rhs),
            ]),
            ExprKind::Call {
                callee,
                args,
                label,
            } => {
                let mut parts = vec![t(callee.name.clone()), self.args(args, callee.span.end)];
                if let Some(l) = label {
                    parts.push(t(format!(" as {}", l.name)));
                }
                Doc::Concat(parts)
            }
            ExprKind::Index { base, items } => {
                // Index lists stay on one line: they are short, and `x[\n...]` reads badly.
                let base = self.expr(base);
                self.one_line += 1;
                let mut s = String::from("[");
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        s.push_str(", ");
                    }
                    match item {
                        IndexItem::Expr(e) => {
                            let d = self.expr(e);
                            s.push_str(&flat(&d));
                        }
                        IndexItem::Ellipsis(_) => s.push_str("..."),
                        IndexItem::Slice {
                            start,
                            end,
                            step,
                            span: _,
                        } => {
                            if let Some(x) = start {
                                let d = self.expr(x);
                                s.push_str(&flat(&d));
                            }
                            s.push(':');
                            if let Some(x) = end {
                                let d = self.expr(x);
                                s.push_str(&flat(&d));
                            }
                            if let Some(x) = step {
                                s.push(':');
                                let d = self.expr(x);
                                s.push_str(&flat(&d));
                            }
                        }
                    }
                }
                s.push(']');
                self.one_line -= 1;
                Doc::Concat(vec![base, Doc::Text(s)])
            }
            ExprKind::Member { base, name } => {
                Doc::Concat(vec![self.expr(base), t(format!(".{}", name.name))])
            }
            ExprKind::IfElse {
                cond,
                then_expr,
                else_expr,
            } => Doc::Concat(vec![
                t("if "),
                self.expr(cond),
                t(" then "),
                self.expr(then_expr),
                t(" else "),
                self.expr(else_expr),
            ]),
            ExprKind::Paren(inner) => Doc::Concat(vec![t("("), self.expr(inner), t(")")]),
        }
    }
}

/// Whether `e` holds an argument list or list literal that the layout can break.
fn has_bracketed_list(e: &Expr) -> bool {
    match &e.kind {
        ExprKind::Call { args, .. } => !args.is_empty(),
        ExprKind::List(items) => !items.is_empty(),
        ExprKind::Int(_)
        | ExprKind::Float(..)
        | ExprKind::Bool(_)
        | ExprKind::Str(_)
        | ExprKind::None
        | ExprKind::Name(_) => false,
        ExprKind::Unary { operand, .. } => has_bracketed_list(operand),
        ExprKind::Binary { lhs, rhs, .. } => has_bracketed_list(lhs) || has_bracketed_list(rhs),
        ExprKind::Index { base, .. } | ExprKind::Member { base, .. } => has_bracketed_list(base),
        ExprKind::IfElse {
            cond,
            then_expr,
            else_expr,
        } => {
            has_bracketed_list(cond)
                || has_bracketed_list(then_expr)
                || has_bracketed_list(else_expr)
        }
        ExprKind::Paren(inner) => has_bracketed_list(inner),
    }
}

/// A doc laid out on one line (a comment inside still ends its line).
fn flat(doc: &Doc) -> String {
    render(doc, 0, usize::MAX)
}

fn write_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
}
