//! Planners: side tables keyed by value id (recompute, memory, sharding). They never rewrite the graph.
