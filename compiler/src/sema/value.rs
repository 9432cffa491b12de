//! The values a spec computes with while it is checked and lowered.
//!
//! Hyperparameters and dims are compile-time values (`Int` may be a symbolic dim such as `seq`);
//! tensors are graph values. Masks are compile-time descriptions that `mask_matrix` turns into
//! boolean tensors.

use std::fmt;

use crate::ir::{DType, Dim, ValueId};

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// An integer; symbolic when it depends on a run dim (`seq - 1`).
    Int(Dim),
    Float(f64),
    Bool(bool),
    Str(String),
    None,
    DType(DType),
    Mask(Mask),
    Tensor(ValueId),
    List(Vec<Value>),
}

/// Which keys each query may attend to.
#[derive(Clone, Debug, PartialEq)]
pub enum Mask {
    /// Key j visible from query i iff j <= i (aligned at the end when there are more keys).
    Causal,
    /// Every key visible (encoders, cross-attention).
    Full,
    /// GPT-3's locally banded sparse layers: i - window < j <= i.
    Banded(i64),
    /// Prefix LM: bidirectional over each row's first `len[b]` tokens, causal after.
    Prefix(ValueId),
    /// Key padding: key j visible iff j < len[b].
    Padding(ValueId),
    /// All of these at once.
    All(Vec<Mask>),
}

impl Value {
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Int(_) => "an integer",
            Value::Float(_) => "a float",
            Value::Bool(_) => "a bool",
            Value::Str(_) => "a string",
            Value::None => "none",
            Value::DType(_) => "a dtype",
            Value::Mask(_) => "a mask",
            Value::Tensor(_) => "a tensor",
            Value::List(_) => "a list",
        }
    }
}

impl fmt::Display for Mask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mask::Causal => f.write_str("causal"),
            Mask::Full => f.write_str("full"),
            Mask::Banded(w) => write!(f, "banded({w})"),
            Mask::Prefix(_) => f.write_str("prefix(..)"),
            Mask::Padding(_) => f.write_str("padding(..)"),
            Mask::All(ms) => {
                f.write_str("[")?;
                for (i, m) in ms.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{m}")?;
                }
                f.write_str("]")
            }
        }
    }
}

/// A hyperparameter value as reported to users (`kiln params`, plans, checkpoints).
impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Int(d) => write!(f, "{d}"),
            Value::Float(x) => write!(f, "{x:?}"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Str(s) => write!(f, "{s:?}"),
            Value::None => f.write_str("none"),
            Value::DType(d) => f.write_str(d.name()),
            Value::Mask(m) => write!(f, "{m}"),
            Value::Tensor(v) => write!(f, "tensor {v:?}"),
            Value::List(xs) => {
                f.write_str("[")?;
                for (i, x) in xs.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{x}")?;
                }
                f.write_str("]")
            }
        }
    }
}
