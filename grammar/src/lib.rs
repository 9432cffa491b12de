//! Kiln grammar.
