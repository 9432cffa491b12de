//! The op-graph IR: shapes with symbolic dims, the closed `Op` enum and its fact table, the graph, verifier and printer.
