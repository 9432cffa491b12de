//! Kiln's grammar: the pest grammar of `.kiln` files, the spanned AST, syntax diagnostics and the
//! pretty-printer behind `kiln fmt`.
//!
//! Architecture invariant: this crate knows nothing of shapes, types or semantics. Parsing never
//! panics: any byte string gives either a `File` or syntax diagnostics.

pub mod ast;
