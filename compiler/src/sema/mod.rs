//! Semantic analysis: name resolution, stdlib expansion, shape/dtype inference, lowering to the op graph.
