//! From text to the spanned AST: the lexical pre-scan, pest, then one builder function per rule.
//!
//! `parse` returns either a whole `File` or every syntax error it found; it never panics and never
//! returns a partial tree (sema has nothing useful to do with half a file, and a partial tree would
//! make every consumer handle holes). Errors come from three places, in this order:
//! 1. the pre-scan (`lex.rs`): unterminated strings, stray characters, unbalanced brackets, too
//!    much nesting; when it reports anything, pest does not run;
//! 2. pest: the first position no rule accepts, with the expected rules turned into words by
//!    `rule_display` ("expected `)` or an expression, found `=`");
//! 3. the builder: checks that the grammar leaves to it because they read better as dedicated
//!    diagnostics (chained comparisons, a positional argument after a named one, integer overflow,
//!    bad string escapes, expressions nested too deeply).
//!
//! Each builder function first asserts which rule it was handed and returns a `syntax::internal`
//! error otherwise, so a grammar change that the builder does not follow is an error, not a panic.

use pest::iterators::Pair;
use pest::Parser as _;

use crate::ast::*;
use crate::error::{SyntaxError, SyntaxErrorKind};
use crate::lex;

#[derive(pest_derive::Parser)]
#[grammar = "kiln.pest"]
struct KilnParser;

/// Deepest expression tree the builder will construct. Every later pass (sema, the formatter,
/// even `Drop`) walks expressions recursively, so a 100 000-term `1 + 1 + ...` must be refused
/// here rather than overflow the stack there.
pub const MAX_EXPR_DEPTH: u32 = 200;

/// Longest `else if` chain: each link nests one `If` deeper in the tree.
pub const MAX_ELSE_IF: usize = 100;

/// The words that cannot be used as names.
pub const KEYWORDS: &[&str] = &[
    "fn",
    "block",
    "model",
    "objective",
    "config",
    "plan",
    "for",
    "input",
    "param",
    "return",
    "repeat",
    "in",
    "as",
    "if",
    "then",
    "else",
    "assert",
    "data",
    "and",
    "or",
    "not",
    "true",
    "false",
    "none",
];

pub fn is_keyword(word: &str) -> bool {
    KEYWORDS.contains(&word)
}

/// Most pest errors reported for one file (see `recovery_region`).
const MAX_SYNTAX_ERRORS: usize = 10;

/// Parses a whole `.kiln` file. On failure the errors are sorted by position; there is at least one.
///
/// After a pest error the parser recovers at item granularity: the broken item (from the last
/// item keyword at the start of a line before the error, to the next one after it) is blanked
/// out, positions unchanged, and the file is parsed again, so one run reports an error in each
/// broken item. Recovery stops when the broken item runs to the end of the file or its text does
/// not balance its brackets, because guessing further would report errors that are not there.
pub fn parse(source: &str) -> Result<File, Vec<SyntaxError>> {
    let tokens = lex::tokenize(source);
    let mut pre = lex::prescan(source, &tokens);
    if !pre.is_empty() {
        pre.sort_by_key(|e| (e.span.start, e.span.end));
        return Err(pre);
    }
    let item_starts = item_starts(source, &tokens);
    let mut errors = Vec::new();
    let mut text = std::borrow::Cow::Borrowed(source);
    let pairs = loop {
        match KilnParser::parse(Rule::file, &text) {
            Ok(pairs) => break Some(pairs),
            Err(e) => {
                let err = from_pest_error(&text, &e);
                let pos = err.span.start;
                errors.push(err);
                if errors.len() >= MAX_SYNTAX_ERRORS {
                    break None;
                }
                match recovery_region(&text, &tokens, &item_starts, pos) {
                    Some((from, to)) => text = std::borrow::Cow::Owned(blank_out(&text, from, to)),
                    None => break None,
                }
            }
        }
    };
    let mut b = Builder {
        token_ends: tokens
            .iter()
            .filter(|t| t.kind != lex::TokKind::Comment)
            .map(|t| t.end)
            .collect(),
        errors,
        reported_too_deep: false,
    };
    let Some(mut pairs) = pairs else {
        return Err(b.sorted_errors());
    };
    let items = match pairs.next() {
        Some(file) => b.file(file),
        None => Err(SyntaxError::internal(
            Span::new(0, 0),
            "pest returned no `file` pair",
        )),
    };
    match items {
        Ok(items) if b.errors.is_empty() => Ok(File {
            items,
            comments: lex::comments(&tokens, source),
        }),
        Ok(_) => Err(b.sorted_errors()),
        Err(internal) => {
            b.errors.push(internal);
            Err(b.sorted_errors())
        }
    }
}

/// Offsets of the item keywords that start a line: where recovery may resume.
fn item_starts(src: &str, tokens: &[lex::Tok]) -> Vec<usize> {
    tokens
        .iter()
        .filter(|t| {
            t.kind == lex::TokKind::Word
                && (t.start == 0 || src.as_bytes()[t.start - 1] == b'\n')
                && matches!(
                    &src[t.start..t.end],
                    "fn" | "block" | "model" | "objective" | "config" | "plan"
                )
        })
        .map(|t| t.start)
        .collect()
}

/// The broken item around an error at `pos`: from the last item start before `pos` (or the file's
/// start) to the first item start at or after it. `None` when there is no next item, when the region
/// is already blank, or when its brackets do not balance.
fn recovery_region(
    text: &str,
    tokens: &[lex::Tok],
    starts: &[usize],
    pos: usize,
) -> Option<(usize, usize)> {
    // Items already blanked out no longer start anything.
    let live = |&&s: &&usize| {
        text.as_bytes()
            .get(s)
            .is_some_and(|b| !b.is_ascii_whitespace())
    };
    let from = starts
        .iter()
        .filter(live)
        .rfind(|&&s| s < pos)
        .copied()
        .unwrap_or(0);
    let to = *starts
        .iter()
        .filter(live)
        .find(|&&s| s >= pos && s > from)?;
    let region = text.get(from..to)?;
    if region.trim().is_empty() {
        return None;
    }
    let mut depth = 0i64;
    for t in tokens
        .iter()
        .filter(|t| t.start >= from && t.end <= to && t.kind == lex::TokKind::Punct)
    {
        match &text[t.start..t.end] {
            "(" | "[" | "{" => depth += 1,
            ")" | "]" | "}" => depth -= 1,
            _ => {}
        }
        if depth < 0 {
            return None;
        }
    }
    (depth == 0).then_some((from, to))
}

/// `text` with `from..to` replaced by spaces, newlines kept: every offset stays valid.
fn blank_out(text: &str, from: usize, to: usize) -> String {
    let mut bytes = text.as_bytes().to_vec();
    for b in &mut bytes[from..to] {
        if *b != b'\n' {
            *b = b' ';
        }
    }
    // Only whole characters were replaced (the region starts and ends at token boundaries), and
    // every replacement is ASCII, so this cannot fail; fall back to the input to stay panic-free.
    String::from_utf8(bytes).unwrap_or_else(|_| text.to_string())
}

/// How a rule reads in "expected ..." messages. Exhaustive on purpose: a new rule must say how it
/// reads. Rules that continue an expression (binary operators, `[`, `.`, a call's `as`) all read
/// "an operator", so an error after an operand lists the few tokens that end it plus that word.
fn rule_display(rule: Rule) -> &'static str {
    match rule {
        Rule::EOI => "end of file",
        Rule::WHITESPACE => "whitespace",
        Rule::COMMENT => "a comment",
        // pest names the first keyword of each kind of item (or the whole `file` when nothing
        // could start): all of them say the same thing.
        Rule::file
        | Rule::item
        | Rule::fn_def
        | Rule::block_def
        | Rule::config_def
        | Rule::plan_def
        | Rule::hf_def
        | Rule::kw_hf
        | Rule::block_kw
        | Rule::kw_fn
        | Rule::kw_block
        | Rule::kw_model
        | Rule::kw_objective
        | Rule::kw_config
        | Rule::kw_plan => "an item",
        Rule::dim => "a dimension",
        Rule::stmt => "a statement",
        Rule::primary => "an expression",
        Rule::digits => "a number",
        Rule::exponent => "an exponent",
        Rule::ident_start | Rule::ident_char => "a name",
        Rule::plan_entry => "a plan entry",
        Rule::plan_key => "a plan key",
        Rule::hf_entry => "a Hugging Face layout entry",
        Rule::hf_subject => "a name or a quoted name",
        Rule::param_list => "`(`",
        Rule::param_decl => "a parameter",
        Rule::tensor_type => "a tensor type",
        Rule::body => "`{`",
        Rule::input_stmt
        | Rule::param_stmt
        | Rule::return_stmt
        | Rule::repeat_stmt
        | Rule::if_stmt
        | Rule::assert_stmt
        | Rule::data_stmt
        | Rule::assign_stmt => "a statement",
        Rule::repeat_var => "a loop variable",
        Rule::repeat_label | Rule::kw_as => "`as`",
        Rule::else_if | Rule::else_clause | Rule::kw_else => "`else`",
        Rule::expr
        | Rule::if_expr
        | Rule::or_expr
        | Rule::and_expr
        | Rule::not_expr
        | Rule::comparison
        | Rule::sum
        | Rule::product
        | Rule::unary
        | Rule::postfix
        | Rule::paren
        | Rule::list
        | Rule::float
        | Rule::int
        | Rule::string
        | Rule::slice_end
        | Rule::slice_step => "an expression",
        Rule::call => "a call",
        Rule::callee => "a name",
        Rule::call_label
        | Rule::index_suffix
        | Rule::member_suffix
        | Rule::cmp_op
        | Rule::add_op
        | Rule::mul_op
        | Rule::pow_op
        | Rule::kw_and
        | Rule::kw_or => "an operator",
        Rule::args | Rule::arg => "an argument",
        Rule::index_item => "an index",
        Rule::slice_tail => "`:`",
        Rule::ident | Rule::keyword => "a name",
        Rule::kw_for => "`for`",
        Rule::kw_input => "`input`",
        Rule::kw_param => "`param`",
        Rule::kw_return => "`return`",
        Rule::kw_repeat => "`repeat`",
        Rule::kw_in => "`in`",
        Rule::kw_if => "`if`",
        Rule::kw_then => "`then`",
        Rule::kw_assert => "`assert`",
        Rule::kw_data => "`data`",
        Rule::kw_not => "`not`",
        Rule::kw_true => "`true`",
        Rule::kw_false => "`false`",
        Rule::kw_none => "`none`",
        Rule::lparen => "`(`",
        Rule::rparen => "`)`",
        Rule::lbracket => "`[`",
        Rule::rbracket => "`]`",
        Rule::lbrace => "`{`",
        Rule::rbrace => "`}`",
        Rule::comma => "`,`",
        Rule::colon => "`:`",
        Rule::semi => "`;`",
        Rule::ellipsis => "`...`",
        Rule::dot => "`.`",
        Rule::assign_op => "`=`",
        Rule::neg_op => "`-`",
    }
}

/// Rules that carry no information once the tree is built (punctuation and structural keywords).
/// Exhaustive for the same reason as `rule_display`.
fn is_syntax_only(rule: Rule) -> bool {
    match rule {
        Rule::EOI
        | Rule::WHITESPACE
        | Rule::COMMENT
        | Rule::lparen
        | Rule::rparen
        | Rule::lbracket
        | Rule::rbracket
        | Rule::lbrace
        | Rule::rbrace
        | Rule::comma
        | Rule::colon
        | Rule::semi
        | Rule::dot
        | Rule::assign_op
        | Rule::kw_fn
        | Rule::kw_config
        | Rule::kw_plan
        | Rule::kw_hf
        | Rule::kw_for
        | Rule::kw_input
        | Rule::kw_param
        | Rule::kw_return
        | Rule::kw_repeat
        | Rule::kw_in
        | Rule::kw_as
        | Rule::kw_if
        | Rule::kw_then
        | Rule::kw_else
        | Rule::kw_assert
        | Rule::kw_data => true,
        // Silent rules never appear as pairs.
        Rule::item
        | Rule::dim
        | Rule::stmt
        | Rule::primary
        | Rule::digits
        | Rule::exponent
        | Rule::ident_start
        | Rule::ident_char => true,
        Rule::file
        | Rule::fn_def
        | Rule::block_def
        | Rule::block_kw
        | Rule::config_def
        | Rule::plan_def
        | Rule::plan_entry
        | Rule::plan_key
        | Rule::hf_def
        | Rule::hf_entry
        | Rule::hf_subject
        | Rule::param_list
        | Rule::param_decl
        | Rule::tensor_type
        | Rule::body
        | Rule::input_stmt
        | Rule::param_stmt
        | Rule::return_stmt
        | Rule::repeat_stmt
        | Rule::repeat_var
        | Rule::repeat_label
        | Rule::if_stmt
        | Rule::else_if
        | Rule::else_clause
        | Rule::assert_stmt
        | Rule::data_stmt
        | Rule::assign_stmt
        | Rule::expr
        | Rule::if_expr
        | Rule::or_expr
        | Rule::and_expr
        | Rule::not_expr
        | Rule::comparison
        | Rule::sum
        | Rule::product
        | Rule::unary
        | Rule::postfix
        | Rule::paren
        | Rule::list
        | Rule::call
        | Rule::callee
        | Rule::call_label
        | Rule::args
        | Rule::arg
        | Rule::index_suffix
        | Rule::index_item
        | Rule::slice_tail
        | Rule::slice_end
        | Rule::slice_step
        | Rule::member_suffix
        | Rule::float
        | Rule::int
        | Rule::string
        | Rule::ident
        | Rule::keyword
        | Rule::kw_block
        | Rule::kw_model
        | Rule::kw_objective
        | Rule::kw_and
        | Rule::kw_or
        | Rule::kw_not
        | Rule::kw_true
        | Rule::kw_false
        | Rule::kw_none
        | Rule::ellipsis
        | Rule::cmp_op
        | Rule::add_op
        | Rule::mul_op
        | Rule::pow_op
        | Rule::neg_op => false,
    }
}

fn from_pest_error(src: &str, e: &pest::error::Error<Rule>) -> SyntaxError {
    let pos = match e.location {
        pest::error::InputLocation::Pos(p) => p,
        pest::error::InputLocation::Span((start, _)) => start,
    };
    let (found, found_span) = lex::describe_found(src, pos);
    let mut expected: Vec<&'static str> = Vec::new();
    if let pest::error::ErrorVariant::ParsingError { positives, .. } = &e.variant {
        for r in positives {
            let d = rule_display(*r);
            if !expected.contains(&d) {
                expected.push(d);
            }
        }
    }
    // `;` is allowed almost everywhere and never what the user is missing.
    if expected.len() > 1 {
        expected.retain(|d| *d != "`;`");
    }
    // pest names the single token of a failed postfix rule (`[` of an index, `.` of a member,
    // `(` of a call) rather than the rule: after an operand these are all "an operator".
    if expected.contains(&"an operator") {
        expected.retain(|d| !matches!(*d, "`(`" | "`[`" | "`.`" | "`as`"));
        // Keep "an operator" last: the specific tokens read first.
        expected.retain(|d| *d != "an operator");
        expected.push("an operator");
    }
    if expected.contains(&"end of file") && expected.len() > 1 {
        expected.retain(|d| *d != "end of file");
        expected.push("end of file");
    }
    let found_text = src.get(found_span.start..found_span.end).unwrap_or("");
    let expects_name = expected.contains(&"a name") || expected.contains(&"a parameter");
    let (message, label) = if expected.is_empty() {
        (format!("unexpected {found}"), "unexpected here".to_string())
    } else {
        let list = join_or(&expected);
        (
            format!("expected {list}, found {found}"),
            format!("expected {list}"),
        )
    };
    let mut err = SyntaxError::new(SyntaxErrorKind::Unexpected, message, found_span, label);
    // When the unexpected token is on a later line, the mistake is usually at the end of the
    // previous one (`x = a +` followed by the next item): point there too.
    let tokens = lex::tokenize(src);
    let previous = tokens
        .iter()
        .rfind(|t| t.kind != lex::TokKind::Comment && t.end <= found_span.start);
    if let Some(prev) = previous {
        if found_span.start >= src.trim_end().len() {
            // Nothing to point at after the end of the file: point at the last token.
            err.span = Span::new(prev.start, prev.end);
            err.label = format!("{} after this", err.label);
        } else if src[prev.end..found_span.start].contains('\n') {
            err = err.with_label(Span::new(prev.start, prev.end), "after this");
        }
    }
    let before = &src[..pos.min(src.len())];
    let prev_two: Vec<char> = before.trim_end().chars().rev().take(2).collect();
    if is_keyword(found_text) && expects_name {
        err.kind = SyntaxErrorKind::ReservedWord;
        err = err.with_help(format!(
            "`{found_text}` is a keyword and cannot be used as a name; try `{found_text}_`"
        ));
    } else if prev_two.len() == 2 && prev_two[0] == '.' && prev_two[1].is_ascii_digit() {
        err = err.with_help("a float needs digits after the point: write `2.0`, not `2.`");
    } else if found_text == "." && src[found_span.end..].starts_with(|c: char| c.is_ascii_digit()) {
        err = err.with_help("a float needs a digit before the point: write `0.5`, not `.5`");
    } else if found_text == "=" && expected.contains(&"an operator") {
        err = err.with_help("`=` binds a name; write `==` to compare");
    } else if found_text == "("
        && expected.contains(&"an operator")
        && before.trim_end().ends_with(')')
    {
        err = err.with_help("only a name can be called: `f(x)`");
    } else if expected.contains(&"an item")
        && !expected.contains(&"an operator")
        && found_text.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && !is_keyword(found_text)
    {
        err = err.with_help(
            "a file holds only `fn`, `block`, `model`, `objective`, `config`, `plan` and `hf` items; \
             statements go inside a body `{ ... }`",
        );
    } else if found_text.starts_with(|c: char| c.is_ascii_digit())
        && found_text.contains(|c: char| c.is_ascii_alphabetic() && c != 'e' && c != 'E')
    {
        err = err.with_help("a name cannot start with a digit");
    }
    err
}

/// "`)`", "`)` or `,`", "`)`, `,` or an operator".
fn join_or(items: &[&str]) -> String {
    match items {
        [] => String::new(),
        [one] => one.to_string(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

type R<T> = Result<T, SyntaxError>;

/// An expression and the depth of its tree (a leaf has depth 1).
type Ex = (Expr, u32);

struct Builder {
    /// Ends of the non-comment tokens, ascending: where a pair's span may end.
    token_ends: Vec<usize>,
    /// Recoverable errors: building goes on so that one parse reports all of them.
    errors: Vec<SyntaxError>,
    reported_too_deep: bool,
}

/// A pair's span as pest gives it (possibly with trailing whitespace): for internal errors.
fn span(p: &Pair<Rule>) -> Span {
    let s = p.as_span();
    Span::new(s.start(), s.end())
}

fn expect(p: &Pair<Rule>, rule: Rule) -> R<()> {
    if p.as_rule() == rule {
        Ok(())
    } else {
        Err(SyntaxError::internal(
            span(p),
            format!("expected {rule:?}, got {:?}", p.as_rule()),
        ))
    }
}

/// The children that carry information.
fn kids<'s>(p: &Pair<'s, Rule>) -> Vec<Pair<'s, Rule>> {
    p.clone()
        .into_inner()
        .filter(|c| !is_syntax_only(c.as_rule()))
        .collect()
}

fn missing(p: &Pair<Rule>, what: &str) -> SyntaxError {
    SyntaxError::internal(span(p), format!("{:?} without {what}", p.as_rule()))
}

fn unexpected_child(c: &Pair<Rule>, parent: &str) -> SyntaxError {
    SyntaxError::internal(span(c), format!("unexpected {:?} in {parent}", c.as_rule()))
}

impl Builder {
    /// The span of a pair without the whitespace and comments that pest's implicit skipping
    /// leaves at the end of a rule followed by an optional or a repetition.
    fn span(&self, p: &Pair<Rule>) -> Span {
        let s = p.as_span();
        let (start, end) = (s.start(), s.end());
        let i = self.token_ends.partition_point(|&e| e <= end);
        let trimmed = match i.checked_sub(1).map(|j| self.token_ends[j]) {
            Some(e) if e > start => e,
            _ => start,
        };
        Span::new(start, trimmed)
    }

    fn sorted_errors(mut self) -> Vec<SyntaxError> {
        self.errors.sort_by_key(|e| (e.span.start, e.span.end));
        self.errors
    }

    fn file<'s>(&mut self, p: Pair<'s, Rule>) -> R<Vec<Item>> {
        expect(&p, Rule::file)?;
        let mut items = Vec::new();
        for c in kids(&p) {
            let item = match c.as_rule() {
                Rule::fn_def => Item::Fn(self.fn_def(c)?),
                Rule::block_def => Item::Block(self.block_def(c)?),
                Rule::config_def => Item::Config(self.config_def(c)?),
                Rule::plan_def => Item::Plan(self.plan_def(c)?),
                Rule::hf_def => Item::Hf(self.hf_def(c)?),
                _ => return Err(unexpected_child(&c, "file")),
            };
            items.push(item);
        }
        Ok(items)
    }

    fn ident<'s>(&mut self, p: &Pair<'s, Rule>) -> R<Ident> {
        match p.as_rule() {
            Rule::ident | Rule::plan_key | Rule::kw_model => Ok(Ident {
                name: p.as_str().to_string(),
                span: self.span(p),
            }),
            _ => Err(SyntaxError::internal(
                self.span(p),
                format!("expected a name, got {:?}", p.as_rule()),
            )),
        }
    }

    fn fn_def<'s>(&mut self, p: Pair<'s, Rule>) -> R<FnDef> {
        expect(&p, Rule::fn_def)?;
        let k = kids(&p);
        let [name, params, body] = k.as_slice() else {
            return Err(missing(&p, "name, params, body"));
        };
        Ok(FnDef {
            name: self.ident(name)?,
            params: self.param_list(params)?,
            body: self.expr(body.clone())?.0,
            span: self.span(&p),
        })
    }

    fn block_def<'s>(&mut self, p: Pair<'s, Rule>) -> R<BlockDef> {
        expect(&p, Rule::block_def)?;
        let k = kids(&p);
        let [kw, name, params, body] = k.as_slice() else {
            return Err(missing(&p, "keyword, name, params, body"));
        };
        expect(kw, Rule::block_kw)?;
        let kind = match kw.clone().into_inner().next().map(|k| k.as_rule()) {
            Some(Rule::kw_block) => BlockKind::Block,
            Some(Rule::kw_model) => BlockKind::Model,
            Some(Rule::kw_objective) => BlockKind::Objective,
            _ => return Err(missing(kw, "a block keyword")),
        };
        Ok(BlockDef {
            kind,
            name: self.ident(name)?,
            params: self.param_list(params)?,
            body: self.body(body)?,
            span: self.span(&p),
        })
    }

    fn config_def<'s>(&mut self, p: Pair<'s, Rule>) -> R<ConfigDef> {
        expect(&p, Rule::config_def)?;
        let k = kids(&p);
        let [name, base, args] = k.as_slice() else {
            return Err(missing(&p, "name, base, args"));
        };
        Ok(ConfigDef {
            name: self.ident(name)?,
            base: self.ident(base)?,
            args: self.args(args)?,
            span: self.span(&p),
        })
    }

    fn plan_def<'s>(&mut self, p: Pair<'s, Rule>) -> R<PlanDef> {
        expect(&p, Rule::plan_def)?;
        let k = kids(&p);
        let [name, target, entries @ ..] = k.as_slice() else {
            return Err(missing(&p, "name and target"));
        };
        let mut out = Vec::new();
        for e in entries {
            expect(e, Rule::plan_entry)?;
            let ek = kids(e);
            let [key, value] = ek.as_slice() else {
                return Err(missing(e, "key and value"));
            };
            out.push(PlanEntry {
                key: self.ident(key)?,
                value: self.expr(value.clone())?.0,
                span: self.span(e),
            });
        }
        Ok(PlanDef {
            name: self.ident(name)?,
            target: self.ident(target)?,
            entries: out,
            span: self.span(&p),
        })
    }

    fn hf_def<'s>(&mut self, p: Pair<'s, Rule>) -> R<HfDef> {
        expect(&p, Rule::hf_def)?;
        let k = kids(&p);
        let [name, target, entries @ ..] = k.as_slice() else {
            return Err(missing(&p, "name and target"));
        };
        let mut out = Vec::new();
        for e in entries {
            expect(e, Rule::hf_entry)?;
            let ek = kids(e);
            let [key, rest @ ..] = ek.as_slice() else {
                return Err(missing(e, "key"));
            };
            let (subject, values) = match rest {
                [s, values @ ..] if s.as_rule() == Rule::hf_subject => {
                    let inner = kids(s);
                    let [word] = inner.as_slice() else {
                        return Err(missing(s, "a name or a string"));
                    };
                    let subject = if word.as_rule() == Rule::string {
                        HfSubject::Str(self.string(word)?, self.span(word))
                    } else {
                        HfSubject::Name(self.ident(word)?)
                    };
                    (Some(subject), values)
                }
                values => (None, values),
            };
            if values.is_empty() {
                return Err(missing(e, "a value"));
            }
            let values = values
                .iter()
                .map(|v| Ok(self.expr(v.clone())?.0))
                .collect::<R<Vec<Expr>>>()?;
            out.push(HfEntry {
                key: self.ident(key)?,
                subject,
                values,
                span: self.span(e),
            });
        }
        Ok(HfDef {
            name: self.ident(name)?,
            target: self.ident(target)?,
            entries: out,
            span: self.span(&p),
        })
    }

    fn param_list<'s>(&mut self, p: &Pair<'s, Rule>) -> R<Vec<ParamDecl>> {
        expect(p, Rule::param_list)?;
        kids(p).iter().map(|d| self.param_decl(d)).collect()
    }

    fn param_decl<'s>(&mut self, p: &Pair<'s, Rule>) -> R<ParamDecl> {
        expect(p, Rule::param_decl)?;
        let k = kids(p);
        let Some((name, rest)) = k.split_first() else {
            return Err(missing(p, "a name"));
        };
        let mut decl = ParamDecl {
            name: self.ident(name)?,
            ty: None,
            default: None,
            span: self.span(p),
        };
        for c in rest {
            match c.as_rule() {
                Rule::tensor_type => decl.ty = Some(self.tensor_type(c)?),
                Rule::expr => decl.default = Some(self.expr(c.clone())?.0),
                _ => return Err(unexpected_child(c, "a parameter")),
            }
        }
        Ok(decl)
    }

    fn tensor_type<'s>(&mut self, p: &Pair<'s, Rule>) -> R<TensorType> {
        expect(p, Rule::tensor_type)?;
        let mut ty = TensorType {
            dtype: None,
            dims: Vec::new(),
            span: self.span(p),
        };
        for c in kids(p) {
            match c.as_rule() {
                Rule::ident => ty.dtype = Some(self.ident(&c)?),
                Rule::ellipsis => ty.dims.push(DimPat::Ellipsis(self.span(&c))),
                Rule::expr => ty.dims.push(DimPat::Expr(self.expr(c)?.0)),
                _ => return Err(unexpected_child(&c, "a tensor type")),
            }
        }
        Ok(ty)
    }

    fn body<'s>(&mut self, p: &Pair<'s, Rule>) -> R<Vec<Stmt>> {
        expect(p, Rule::body)?;
        kids(p).into_iter().map(|s| self.stmt(s)).collect()
    }

    fn stmt<'s>(&mut self, p: Pair<'s, Rule>) -> R<Stmt> {
        let sp = self.span(&p);
        let k = kids(&p);
        match (p.as_rule(), k.as_slice()) {
            (Rule::input_stmt, [name, ty]) => Ok(Stmt::Input {
                name: self.ident(name)?,
                ty: self.tensor_type(ty)?,
                span: sp,
            }),
            (Rule::param_stmt, [name, ty, init]) => Ok(Stmt::Param {
                name: self.ident(name)?,
                ty: self.tensor_type(ty)?,
                init: self.expr(init.clone())?.0,
                span: sp,
            }),
            (Rule::assign_stmt, [target, value]) => Ok(Stmt::Assign {
                target: self.ident(target)?,
                value: self.expr(value.clone())?.0,
                span: sp,
            }),
            (Rule::return_stmt, [value]) => Ok(Stmt::Return {
                value: self.expr(value.clone())?.0,
                span: sp,
            }),
            (Rule::repeat_stmt, _) => self.repeat(&p, &k),
            (Rule::if_stmt, _) => self.if_stmt(&p, &k),
            (Rule::assert_stmt, [cond, rest @ ..]) => {
                let cond = self.expr(cond.clone())?.0;
                let message = match rest {
                    [] => None,
                    [s] => Some(self.string(s)?),
                    _ => return Err(missing(&p, "at most one message")),
                };
                Ok(Stmt::Assert {
                    cond,
                    message,
                    span: sp,
                })
            }
            (Rule::data_stmt, [call]) => Ok(Stmt::Data {
                call: self.call(call.clone())?.0,
                span: sp,
            }),
            _ => Err(SyntaxError::internal(
                sp,
                format!(
                    "expected a statement, got {:?} with {} parts",
                    p.as_rule(),
                    k.len()
                ),
            )),
        }
    }

    fn repeat<'s>(&mut self, p: &Pair<'s, Rule>, k: &[Pair<'s, Rule>]) -> R<Stmt> {
        let mut var = None;
        let mut count = None;
        let mut label = None;
        let mut body = None;
        for c in k {
            match c.as_rule() {
                Rule::repeat_var | Rule::repeat_label => {
                    let inner = kids(c);
                    let [name] = inner.as_slice() else {
                        return Err(missing(c, "a name"));
                    };
                    let id = self.ident(name)?;
                    if c.as_rule() == Rule::repeat_var {
                        var = Some(id);
                    } else {
                        label = Some(id);
                    }
                }
                Rule::expr => count = Some(self.expr(c.clone())?.0),
                Rule::body => body = Some(self.body(c)?),
                _ => return Err(unexpected_child(c, "repeat")),
            }
        }
        match (count, body) {
            (Some(count), Some(body)) => Ok(Stmt::Repeat {
                var,
                count,
                label,
                body,
                span: self.span(p),
            }),
            _ => Err(missing(p, "a count and a body")),
        }
    }

    /// `if a {..} else if b {..} else {..}`: the grammar lists the `else if` parts flat; fold them
    /// from the right into nested `If`s, each spanning from its `if` to the end of the chain.
    fn if_stmt<'s>(&mut self, p: &Pair<'s, Rule>, k: &[Pair<'s, Rule>]) -> R<Stmt> {
        let [cond, then_body, rest @ ..] = k else {
            return Err(missing(p, "a condition and a body"));
        };
        let cond = self.expr(cond.clone())?.0;
        let then_body = self.body(then_body)?;
        let end = p.as_span().end();
        let mut else_body: Option<Vec<Stmt>> = None;
        let mut chain: Vec<(Expr, Vec<Stmt>, usize)> = Vec::new();
        for c in rest {
            match c.as_rule() {
                Rule::else_if => {
                    let ck = kids(c);
                    let [c_cond, c_body] = ck.as_slice() else {
                        return Err(missing(c, "a condition and a body"));
                    };
                    let if_start = c
                        .clone()
                        .into_inner()
                        .find(|t| t.as_rule() == Rule::kw_if)
                        .map_or(self.span(c).start, |t| self.span(&t).start);
                    chain.push((self.expr(c_cond.clone())?.0, self.body(c_body)?, if_start));
                }
                Rule::else_clause => {
                    let ck = kids(c);
                    let [b] = ck.as_slice() else {
                        return Err(missing(c, "a body"));
                    };
                    else_body = Some(self.body(b)?);
                }
                _ => return Err(unexpected_child(c, "if")),
            }
        }
        if chain.len() > MAX_ELSE_IF {
            self.errors.push(
                SyntaxError::new(
                    SyntaxErrorKind::TooDeep,
                    "`else if` chain too long",
                    self.span(p),
                    format!("more than {MAX_ELSE_IF} `else if` branches"),
                )
                .with_help("split the decision into several statements"),
            );
            chain.truncate(MAX_ELSE_IF);
        }
        for (c_cond, c_body, start) in chain.into_iter().rev() {
            let nested = Stmt::If {
                cond: c_cond,
                then_body: c_body,
                else_body: else_body.take(),
                span: Span::new(start, end),
            };
            else_body = Some(vec![nested]);
        }
        Ok(Stmt::If {
            cond,
            then_body,
            else_body,
            span: self.span(p),
        })
    }

    fn string<'s>(&mut self, p: &Pair<'s, Rule>) -> R<String> {
        expect(p, Rule::string)?;
        let raw = p.as_str();
        let start = p.as_span().start();
        let inner = raw.get(1..raw.len().saturating_sub(1)).unwrap_or("");
        let mut out = String::with_capacity(inner.len());
        let mut chars = inner.char_indices();
        while let Some((i, c)) = chars.next() {
            if c != '\\' {
                out.push(c);
                continue;
            }
            match chars.next() {
                Some((_, '"')) => out.push('"'),
                Some((_, '\\')) => out.push('\\'),
                Some((_, 'n')) => out.push('\n'),
                Some((_, 't')) => out.push('\t'),
                Some((j, other)) => {
                    let at = start + 1 + i;
                    let end = start + 1 + j + other.len_utf8();
                    self.errors.push(
                        SyntaxError::new(
                            SyntaxErrorKind::BadEscape,
                            format!("unknown escape `\\{other}`"),
                            Span::new(at, end),
                            "not a known escape",
                        )
                        .with_help("the escapes are `\\\"`, `\\\\`, `\\n` and `\\t`"),
                    );
                }
                None => {
                    return Err(SyntaxError::internal(
                        self.span(p),
                        "a string ends in a backslash",
                    ))
                }
            }
        }
        Ok(out)
    }

    // ---- expressions ----

    /// Builds a node of depth `depth`, or refuses one that is too deep.
    fn node(&mut self, kind: ExprKind, sp: Span, depth: u32) -> Ex {
        self.node_at(kind, sp, depth, sp)
    }

    /// `node`, pointing a too-deep error at `focus` (the part that went over the limit).
    fn node_at(&mut self, kind: ExprKind, sp: Span, depth: u32, focus: Span) -> Ex {
        if depth <= MAX_EXPR_DEPTH {
            return (Expr { kind, span: sp }, depth);
        }
        // Drop `kind` here, while its depth is still bounded by MAX_EXPR_DEPTH + 1.
        drop(kind);
        if !self.reported_too_deep {
            self.reported_too_deep = true;
            self.errors.push(
                SyntaxError::new(
                    SyntaxErrorKind::TooDeep,
                    "expression too deeply nested",
                    focus,
                    format!("this makes the expression nest more than {MAX_EXPR_DEPTH} operations"),
                )
                .with_help("split it into named steps (`y = ...`)"),
            );
        }
        (
            Expr {
                kind: ExprKind::None,
                span: sp,
            },
            1,
        )
    }

    fn binary(&mut self, op: BinaryOp, lhs: Ex, rhs: Ex) -> Ex {
        let sp = lhs.0.span.join(rhs.0.span);
        let depth = 1 + lhs.1.max(rhs.1);
        let focus = rhs.0.span;
        self.node_at(
            ExprKind::Binary {
                op,
                lhs: Box::new(lhs.0),
                rhs: Box::new(rhs.0),
            },
            sp,
            depth,
            focus,
        )
    }

    fn unary_node(&mut self, op: UnaryOp, op_start: usize, operand: Ex) -> Ex {
        let sp = Span::new(op_start, operand.0.span.end);
        let depth = 1 + operand.1;
        let focus = Span::new(op_start, op_start + 1);
        self.node_at(
            ExprKind::Unary {
                op,
                operand: Box::new(operand.0),
            },
            sp,
            depth,
            focus,
        )
    }

    fn expr<'s>(&mut self, p: Pair<'s, Rule>) -> R<Ex> {
        match p.as_rule() {
            Rule::expr => {
                let mut k = kids(&p);
                match (k.pop(), k.is_empty()) {
                    (Some(inner), true) => self.expr(inner),
                    _ => Err(missing(&p, "exactly one part")),
                }
            }
            Rule::if_expr => self.if_expr(p),
            Rule::or_expr | Rule::and_expr | Rule::sum | Rule::product => self.left_fold(p),
            Rule::not_expr => self.not_expr(p),
            Rule::comparison => self.comparison(p),
            Rule::unary => self.unary(p),
            Rule::postfix => self.postfix(p),
            _ => Err(unexpected_child(&p, "an expression")),
        }
    }

    /// `(kw_if cond kw_then value kw_else)+ otherwise`, folded from the right.
    fn if_expr<'s>(&mut self, p: Pair<'s, Rule>) -> R<Ex> {
        let if_starts: Vec<usize> = p
            .clone()
            .into_inner()
            .filter(|t| t.as_rule() == Rule::kw_if)
            .map(|t| self.span(&t).start)
            .collect();
        let mut k = kids(&p);
        let Some(last) = k.pop() else {
            return Err(missing(&p, "an else value"));
        };
        if !k.len().is_multiple_of(2) || k.len() / 2 != if_starts.len() {
            return Err(missing(&p, "matching `if`/`then` pairs"));
        }
        let mut acc = self.expr(last)?;
        let mut parts = k.into_iter();
        let mut pairs = Vec::new();
        while let (Some(c), Some(t)) = (parts.next(), parts.next()) {
            pairs.push((c, t));
        }
        for ((c, t), start) in pairs.into_iter().zip(if_starts).rev() {
            let cond = self.expr(c)?;
            let then = self.expr(t)?;
            let sp = Span::new(start, acc.0.span.end);
            let depth = 1 + cond.1.max(then.1).max(acc.1);
            acc = self.node(
                ExprKind::IfElse {
                    cond: Box::new(cond.0),
                    then_expr: Box::new(then.0),
                    else_expr: Box::new(acc.0),
                },
                sp,
                depth,
            );
        }
        Ok(acc)
    }

    /// `a op b op c` for the left-associative levels.
    fn left_fold<'s>(&mut self, p: Pair<'s, Rule>) -> R<Ex> {
        let mut parts = kids(&p).into_iter();
        let Some(first) = parts.next() else {
            return Err(missing(&p, "an operand"));
        };
        let mut acc = self.expr(first)?;
        while let Some(op) = parts.next() {
            let op = binary_op(&op)?;
            let Some(rhs) = parts.next() else {
                return Err(missing(&p, "a right operand"));
            };
            let rhs = self.expr(rhs)?;
            acc = self.binary(op, acc, rhs);
        }
        Ok(acc)
    }

    fn not_expr<'s>(&mut self, p: Pair<'s, Rule>) -> R<Ex> {
        let mut k = kids(&p);
        let Some(operand) = k.pop() else {
            return Err(missing(&p, "an operand"));
        };
        let mut acc = self.expr(operand)?;
        for not in k.iter().rev() {
            expect(not, Rule::kw_not)?;
            acc = self.unary_node(UnaryOp::Not, self.span(not).start, acc);
        }
        Ok(acc)
    }

    /// Comparisons do not associate: `a < b < c` is an error (Python would read it as
    /// `a < b and b < c`, Rust refuses it; refusing is the choice that cannot surprise).
    fn comparison<'s>(&mut self, p: Pair<'s, Rule>) -> R<Ex> {
        let k = kids(&p);
        match k.as_slice() {
            [single] => self.expr(single.clone()),
            [lhs, op, rhs, rest @ ..] => {
                let bop = binary_op(op)?;
                let l = self.expr(lhs.clone())?;
                let r = self.expr(rhs.clone())?;
                if let [op2, rhs2, ..] = rest {
                    let text = |q: &Pair<Rule>| {
                        let len = self.span(q).len();
                        q.as_str().get(..len).unwrap_or("").to_string()
                    };
                    let help = format!(
                        "write `{} {} {} and {} {} {}`, or add parentheses",
                        text(lhs),
                        text(op),
                        text(rhs),
                        text(rhs),
                        text(op2),
                        text(rhs2)
                    );
                    self.errors.push(
                        SyntaxError::new(
                            SyntaxErrorKind::ChainedComparison,
                            "comparison operators cannot be chained",
                            self.span(op2),
                            "second comparison here",
                        )
                        .with_label(self.span(op), "first comparison here")
                        .with_help(help),
                    );
                }
                Ok(self.binary(bop, l, r))
            }
            _ => Err(missing(&p, "operands")),
        }
    }

    /// `neg_op* postfix (pow_op neg_op* postfix)*`: `**` is right-associative and binds tighter
    /// than the minus signs on its left.
    fn unary<'s>(&mut self, p: Pair<'s, Rule>) -> R<Ex> {
        // Segments: the minus signs before an operand, the operand.
        let mut segments: Vec<(Vec<usize>, Pair<'s, Rule>)> = Vec::new();
        let mut negs = Vec::new();
        let mut expect_pow = false;
        for c in kids(&p) {
            match c.as_rule() {
                Rule::neg_op if !expect_pow => negs.push(self.span(&c).start),
                Rule::postfix if !expect_pow => {
                    segments.push((std::mem::take(&mut negs), c));
                    expect_pow = true;
                }
                Rule::pow_op if expect_pow => expect_pow = false,
                _ => return Err(unexpected_child(&c, "a unary expression")),
            }
        }
        if !expect_pow {
            return Err(missing(&p, "an operand after its operators"));
        }
        let mut acc: Option<Ex> = None;
        for (negs, operand) in segments.into_iter().rev() {
            let base = self.postfix(operand)?;
            let mut value = match acc.take() {
                Some(exponent) => self.binary(BinaryOp::Pow, base, exponent),
                None => base,
            };
            for &start in negs.iter().rev() {
                value = self.unary_node(UnaryOp::Neg, start, value);
            }
            acc = Some(value);
        }
        acc.ok_or_else(|| missing(&p, "an operand"))
    }

    fn postfix<'s>(&mut self, p: Pair<'s, Rule>) -> R<Ex> {
        expect(&p, Rule::postfix)?;
        let mut parts = kids(&p).into_iter();
        let Some(primary) = parts.next() else {
            return Err(missing(&p, "a primary"));
        };
        let mut acc = self.primary(primary)?;
        for suffix in parts {
            let start = acc.0.span.start;
            let sp = Span::new(start, self.span(&suffix).end);
            match suffix.as_rule() {
                Rule::index_suffix => {
                    let mut items = Vec::new();
                    let mut depth = acc.1;
                    for it in kids(&suffix) {
                        let (item, d) = self.index_item(&it)?;
                        depth = depth.max(d);
                        items.push(item);
                    }
                    acc = self.node(
                        ExprKind::Index {
                            base: Box::new(acc.0),
                            items,
                        },
                        sp,
                        depth + 1,
                    );
                }
                Rule::member_suffix => {
                    let mk = kids(&suffix);
                    let [name] = mk.as_slice() else {
                        return Err(missing(&suffix, "a name"));
                    };
                    let name = self.ident(name)?;
                    acc = self.node(
                        ExprKind::Member {
                            base: Box::new(acc.0),
                            name,
                        },
                        sp,
                        acc.1 + 1,
                    );
                }
                _ => return Err(unexpected_child(&suffix, "a postfix expression")),
            }
        }
        Ok(acc)
    }

    fn index_item<'s>(&mut self, p: &Pair<'s, Rule>) -> R<(IndexItem, u32)> {
        expect(p, Rule::index_item)?;
        let k = kids(p);
        let slice =
            |b: &mut Self, start: Option<Ex>, tail: &Pair<'s, Rule>| -> R<(IndexItem, u32)> {
                expect(tail, Rule::slice_tail)?;
                let mut depth = start.as_ref().map_or(0, |s| s.1);
                let (mut end, mut step) = (None, None);
                for part in kids(tail) {
                    let inner = kids(&part);
                    let [e] = inner.as_slice() else {
                        return Err(missing(&part, "an expression"));
                    };
                    let (e, d) = b.expr(e.clone())?;
                    depth = depth.max(d);
                    match part.as_rule() {
                        Rule::slice_end => end = Some(e),
                        Rule::slice_step => step = Some(e),
                        _ => return Err(unexpected_child(&part, "a slice")),
                    }
                }
                let item = IndexItem::Slice {
                    start: start.map(|s| s.0),
                    end,
                    step,
                    span: b.span(p),
                };
                Ok((item, depth))
            };
        match k.as_slice() {
            [e] if e.as_rule() == Rule::ellipsis => Ok((IndexItem::Ellipsis(self.span(e)), 0)),
            [e] if e.as_rule() == Rule::expr => {
                let (e, d) = self.expr(e.clone())?;
                Ok((IndexItem::Expr(e), d))
            }
            [tail] => slice(self, None, tail),
            [start, tail] => {
                let start = self.expr(start.clone())?;
                slice(self, Some(start), tail)
            }
            _ => Err(missing(p, "an index")),
        }
    }

    fn primary<'s>(&mut self, p: Pair<'s, Rule>) -> R<Ex> {
        let sp = self.span(&p);
        let leaf = |kind| Ok((Expr { kind, span: sp }, 1));
        match p.as_rule() {
            Rule::paren => {
                let k = kids(&p);
                let [inner] = k.as_slice() else {
                    return Err(missing(&p, "an expression"));
                };
                let (inner, d) = self.expr(inner.clone())?;
                Ok(self.node(ExprKind::Paren(Box::new(inner)), sp, d + 1))
            }
            Rule::list => {
                let mut items = Vec::new();
                let mut depth = 0;
                for c in kids(&p) {
                    let (e, d) = self.expr(c)?;
                    depth = depth.max(d);
                    items.push(e);
                }
                Ok(self.node(ExprKind::List(items), sp, depth + 1))
            }
            Rule::call => self.call(p),
            Rule::int => {
                let digits: String = p.as_str().chars().filter(|&c| c != '_').collect();
                match digits.parse::<i64>() {
                    Ok(v) => leaf(ExprKind::Int(v)),
                    Err(_) => {
                        self.errors.push(
                            SyntaxError::new(
                                SyntaxErrorKind::IntOverflow,
                                "integer literal too large",
                                sp,
                                "does not fit in a 64-bit signed integer",
                            )
                            .with_help(format!(
                                "the largest integer is {}; write a float (`1e19`) for a large \
                                 approximate value",
                                i64::MAX
                            )),
                        );
                        leaf(ExprKind::Int(0))
                    }
                }
            }
            Rule::float => {
                let text = p.as_str();
                let digits: String = text.chars().filter(|&c| c != '_').collect();
                match digits.parse::<f64>() {
                    Ok(v) if v.is_finite() => leaf(ExprKind::Float(v, text.to_string())),
                    _ => {
                        self.errors.push(
                            SyntaxError::new(
                                SyntaxErrorKind::FloatOverflow,
                                "float literal too large",
                                sp,
                                "does not fit in a 64-bit float",
                            )
                            .with_help("the largest float is about 1.8e308"),
                        );
                        leaf(ExprKind::Float(0.0, text.to_string()))
                    }
                }
            }
            Rule::string => {
                let s = self.string(&p)?;
                leaf(ExprKind::Str(s))
            }
            Rule::kw_true => leaf(ExprKind::Bool(true)),
            Rule::kw_false => leaf(ExprKind::Bool(false)),
            Rule::kw_none => leaf(ExprKind::None),
            Rule::ident => {
                let id = self.ident(&p)?;
                leaf(ExprKind::Name(id))
            }
            _ => Err(unexpected_child(&p, "a primary expression")),
        }
    }

    fn call<'s>(&mut self, p: Pair<'s, Rule>) -> R<Ex> {
        expect(&p, Rule::call)?;
        let k = kids(&p);
        let (callee, args, label) = match k.as_slice() {
            [callee, args] => (callee, args, None),
            [callee, args, label] => (callee, args, Some(label)),
            _ => return Err(missing(&p, "a callee and arguments")),
        };
        expect(callee, Rule::callee)?;
        let ck = callee.clone().into_inner().collect::<Vec<_>>();
        let [name] = ck.as_slice() else {
            return Err(missing(callee, "a name"));
        };
        let callee = self.ident(name)?;
        let label = match label {
            Some(l) => {
                expect(l, Rule::call_label)?;
                let lk = kids(l);
                let [name] = lk.as_slice() else {
                    return Err(missing(l, "a label"));
                };
                Some(self.ident(name)?)
            }
            None => None,
        };
        let (args, depth) = self.args_with_depth(args)?;
        Ok(self.node(
            ExprKind::Call {
                callee,
                args,
                label,
            },
            self.span(&p),
            depth + 1,
        ))
    }

    fn args<'s>(&mut self, p: &Pair<'s, Rule>) -> R<Vec<Arg>> {
        Ok(self.args_with_depth(p)?.0)
    }

    fn args_with_depth<'s>(&mut self, p: &Pair<'s, Rule>) -> R<(Vec<Arg>, u32)> {
        expect(p, Rule::args)?;
        let mut out: Vec<Arg> = Vec::new();
        let mut depth = 0;
        let mut first_named: Option<Span> = None;
        for a in kids(p) {
            expect(&a, Rule::arg)?;
            let ak = kids(&a);
            let (name, value) = match ak.as_slice() {
                [value] => (None, value),
                [name, value] => (Some(self.ident(name)?), value),
                _ => return Err(missing(&a, "a value")),
            };
            let (value, d) = self.expr(value.clone())?;
            depth = depth.max(d);
            let sp = self.span(&a);
            match (&name, first_named) {
                (Some(_), None) => first_named = Some(sp),
                (None, Some(named)) => self.errors.push(
                    SyntaxError::new(
                        SyntaxErrorKind::PositionalAfterNamed,
                        "positional argument after a named argument",
                        sp,
                        "positional argument",
                    )
                    .with_label(named, "named arguments start here")
                    .with_help(
                        "put positional arguments first, or give this one a name (`name = value`)",
                    ),
                ),
                _ => {}
            }
            out.push(Arg {
                name,
                value,
                span: sp,
            });
        }
        Ok((out, depth))
    }
}

fn binary_op(p: &Pair<Rule>) -> R<BinaryOp> {
    let op = match (p.as_rule(), p.as_str()) {
        (Rule::kw_or, _) => BinaryOp::Or,
        (Rule::kw_and, _) => BinaryOp::And,
        (Rule::cmp_op, "==") => BinaryOp::Eq,
        (Rule::cmp_op, "!=") => BinaryOp::Ne,
        (Rule::cmp_op, "<") => BinaryOp::Lt,
        (Rule::cmp_op, "<=") => BinaryOp::Le,
        (Rule::cmp_op, ">") => BinaryOp::Gt,
        (Rule::cmp_op, ">=") => BinaryOp::Ge,
        (Rule::add_op, "+") => BinaryOp::Add,
        (Rule::add_op, "-") => BinaryOp::Sub,
        (Rule::mul_op, "*") => BinaryOp::Mul,
        (Rule::mul_op, "/") => BinaryOp::Div,
        (Rule::mul_op, "//") => BinaryOp::FloorDiv,
        (Rule::mul_op, "%") => BinaryOp::Mod,
        (Rule::mul_op, "@") => BinaryOp::MatMul,
        (Rule::pow_op, "**") => BinaryOp::Pow,
        (rule, text) => {
            return Err(SyntaxError::internal(
                span(p),
                format!("unknown operator {rule:?} `{text}`"),
            ))
        }
    };
    Ok(op)
}
