//! The op-graph IR: shapes with symbolic dims, the closed `Op` enum and its fact table, the graph
//! and its builder, the verifier and the printer.
//!
//! Sema lowers a checked model into a `Graph` through `Builder`; autodiff, passes, fusion and the
//! interpreter consume it. Every stage can be printed (`print::print_graph`) and verified
//! (`verify::verify`).

pub mod graph;
pub mod ops;
pub mod print;
pub mod rng;
pub mod shape;
pub mod verify;

pub use graph::{Builder, Graph, NamedValue, Node, StateUpdate, ValueId};
pub use ops::{
    facts, infer, Arity, AttnGrad, AttnMask, AttnSpec, BinaryOp, CmpOp, Init, Op, OpFacts, UnaryOp,
};
pub use print::print_graph;
pub use shape::{
    bind_shape, numel, shape_of, shape_str, Bindings, DType, Dim, Shape, Symbol, TensorType,
};
pub use verify::{verify, VerifyError};

/// Errors from building, typing or binding a graph. Shape errors name the op and carry both
/// operand types so sema can turn them into a diagnostic.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum IrError {
    #[error("{op}: incompatible operands {lhs} and {rhs}: {detail}")]
    ShapeMismatch {
        op: String,
        lhs: TensorType,
        rhs: TensorType,
        detail: String,
    },
    #[error("{op}: operand {got} must be {expected}")]
    DTypeError {
        op: String,
        got: TensorType,
        expected: &'static str,
    },
    #[error("{op}: expected {expected} operands, got {got}")]
    Arity {
        op: String,
        expected: Arity,
        got: usize,
    },
    #[error("{op}: {detail}{}", input.as_ref().map(|t| format!(" (operand {t})")).unwrap_or_default())]
    BadAttribute {
        op: String,
        input: Option<TensorType>,
        detail: String,
    },
    #[error("value {value} does not exist in the graph")]
    UnknownValue { value: ValueId },
    #[error("duplicate {kind} name `{name}`")]
    DuplicateName { kind: &'static str, name: String },
    #[error("no {kind} named `{name}`")]
    NotFound { kind: &'static str, name: String },
    #[error("symbol `{symbol}` is not bound")]
    UnboundSymbol { symbol: String },
    #[error("dim `{dim}` overflows i64 when bound")]
    Overflow { dim: String },
    #[error("dim `{dim}` is negative ({value}) when bound")]
    NegativeDim { dim: String, value: i64 },
    #[error("the graph has a cycle")]
    Cycle,
    #[error("autodiff: {detail}")]
    Autodiff { detail: String },
}
