//! Syntax diagnostics.
//!
//! A `SyntaxError` is a miette diagnostic with a namespaced code (`syntax::unclosed`), a labelled
//! span and, where a fix is known, help. It does not hold the source text: the caller (the CLI or
//! `compiler::sema`) owns the file name and text and attaches them with [`SyntaxError::with_source`]
//! or `miette::Report::with_source_code`, so errors stay cheap to build, compare and store.

use std::fmt;

use crate::ast::Span;

/// What went wrong; each kind has one stable diagnostic code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SyntaxErrorKind {
    /// pest found a token that no rule accepts here.
    Unexpected,
    /// A bracket that is never closed, or closed by the wrong kind of bracket.
    Unclosed,
    /// A closing bracket with nothing open.
    UnmatchedClose,
    UnterminatedString,
    /// A character that is not part of the language (outside strings and comments).
    StrayChar,
    /// An integer literal that does not fit in an `i64`.
    IntOverflow,
    /// A float literal that is not finite (`1e999`).
    FloatOverflow,
    /// `a < b < c`
    ChainedComparison,
    /// `f(x = 1, y)`
    PositionalAfterNamed,
    /// A string escape other than `\"`, `\\`, `\n`, `\t`.
    BadEscape,
    /// Brackets, `if`s or operator chains nested beyond what the parser and later passes allow.
    TooDeep,
    /// A keyword where a name is expected (`param in: [d] = zeros`).
    ReservedWord,
    /// The AST builder met a parse tree it did not expect: a bug in this crate, never the user's.
    Internal,
}

impl SyntaxErrorKind {
    pub fn code(self) -> &'static str {
        match self {
            SyntaxErrorKind::Unexpected => "syntax::unexpected",
            SyntaxErrorKind::Unclosed => "syntax::unclosed",
            SyntaxErrorKind::UnmatchedClose => "syntax::unmatched_close",
            SyntaxErrorKind::UnterminatedString => "syntax::unterminated_string",
            SyntaxErrorKind::StrayChar => "syntax::stray_char",
            SyntaxErrorKind::IntOverflow => "syntax::int_overflow",
            SyntaxErrorKind::FloatOverflow => "syntax::float_overflow",
            SyntaxErrorKind::ChainedComparison => "syntax::chained_comparison",
            SyntaxErrorKind::PositionalAfterNamed => "syntax::positional_after_named",
            SyntaxErrorKind::BadEscape => "syntax::bad_escape",
            SyntaxErrorKind::TooDeep => "syntax::too_deep",
            SyntaxErrorKind::ReservedWord => "syntax::reserved_word",
            SyntaxErrorKind::Internal => "syntax::internal",
        }
    }
}

/// One syntax diagnostic. `span` is the primary label; `labels` are secondary ones.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyntaxError {
    pub kind: SyntaxErrorKind,
    pub message: String,
    pub span: Span,
    pub label: String,
    pub labels: Vec<(Span, String)>,
    pub help: Option<String>,
}

impl SyntaxError {
    pub fn new(
        kind: SyntaxErrorKind,
        message: impl Into<String>,
        span: Span,
        label: impl Into<String>,
    ) -> Self {
        SyntaxError {
            kind,
            message: message.into(),
            span,
            label: label.into(),
            labels: Vec::new(),
            help: None,
        }
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    pub fn with_label(mut self, span: Span, label: impl Into<String>) -> Self {
        self.labels.push((span, label.into()));
        self
    }

    pub fn code(&self) -> &'static str {
        self.kind.code()
    }

    /// A report that renders with the file's text: `err.with_source(NamedSource::new(path, text))`.
    pub fn with_source<S>(self, source: S) -> miette::Report
    where
        S: miette::SourceCode + Send + Sync + 'static,
    {
        miette::Report::new(self).with_source_code(source)
    }

    pub(crate) fn internal(span: Span, what: impl Into<String>) -> Self {
        SyntaxError::new(
            SyntaxErrorKind::Internal,
            format!("internal parser error: {}", what.into()),
            span,
            "while building the syntax tree here",
        )
        .with_help("this is a bug in kiln-grammar, not in your file; please report it")
    }
}

impl fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for SyntaxError {}

impl miette::Diagnostic for SyntaxError {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new(self.kind.code()))
    }

    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.help
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn fmt::Display + 'a>)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = miette::LabeledSpan> + '_>> {
        let primary = miette::LabeledSpan::new_primary_with_span(
            Some(self.label.clone()),
            miette::SourceSpan::from(self.span),
        );
        let rest = self.labels.iter().map(|(span, label)| {
            miette::LabeledSpan::new_with_span(Some(label.clone()), miette::SourceSpan::from(*span))
        });
        Some(Box::new(std::iter::once(primary).chain(rest)))
    }
}
