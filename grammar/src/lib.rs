//! Kiln's grammar: the pest grammar of `.kiln` files, the spanned AST, syntax diagnostics and the
//! pretty-printer behind `kiln fmt`.
//!
//! Architecture invariant: this crate knows nothing of shapes, types or semantics. Parsing never
//! panics: any string gives either a `File` or syntax diagnostics.
//!
//! API boundary: [`parse`] (text → [`ast::File`] or [`SyntaxError`]s), [`format`] (AST + its text →
//! canonical text), [`ast_eq::without_spans`] (structural comparison for tests and tools).

pub mod ast;
pub mod ast_eq;
mod doc;
pub mod error;
pub mod fmt;
mod lex;
pub mod parser;

pub use error::{SyntaxError, SyntaxErrorKind};

/// How deep a file may nest; beyond these the parser reports `syntax::too_deep`.
pub mod limits {
    pub use crate::lex::MAX_NESTING;
    pub use crate::parser::{MAX_ELSE_IF, MAX_EXPR_DEPTH};
}
pub use fmt::format;
pub use parser::parse;
