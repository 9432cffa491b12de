//! Graph passes, one per file, each registered by name with a summary.

pub mod attention;
pub mod fusion;
