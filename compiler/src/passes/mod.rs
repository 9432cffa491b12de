//! Graph passes, one per file, each registered by name with a summary.
