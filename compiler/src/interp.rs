//! Reference interpreter for the IR: plain loops, no cleverness; the oracle of every numeric test.
//!
//! Floats are held as `f64`. With `Precision::F64` every float op is computed and kept in f64
//! whatever its declared dtype (for gradient checks); with `Precision::Declared` each float result
//! is rounded to its declared dtype (f32, bf16, f16: round to nearest even) after every op, so an
//! f32 graph gives correctly-rounded-per-op f32 results (reductions and matmuls accumulate in f64
//! and round once, which makes this a slightly *better* answer than a real f32 kernel).
//! In F64 mode even an explicit cast between float types keeps the f64 value.
//! Integers are held as `i64` and wrap to i32 for `I32`. Float → int casts truncate toward zero
//! (saturating); `max`/`min` propagate NaN. Out-of-range indices are errors, not panics.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::ir::ops::{AttnGrad, AttnMask, AttnSpec, BinaryOp, CmpOp, Op, UnaryOp};
use crate::ir::shape::{bind_shape, Bindings, DType};
use crate::ir::{rng, Graph, IrError, ValueId};

/// Element storage.
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    Float(Vec<f64>),
    Int(Vec<i64>),
    Bool(Vec<bool>),
}

impl TensorData {
    pub fn len(&self) -> usize {
        match self {
            TensorData::Float(v) => v.len(),
            TensorData::Int(v) => v.len(),
            TensorData::Bool(v) => v.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// out[i] = self[map[i]], or zero where `map[i]` is `None`.
    fn remap(&self, map: &[Option<usize>]) -> TensorData {
        match self {
            TensorData::Float(v) => {
                TensorData::Float(map.iter().map(|m| m.map_or(0.0, |i| v[i])).collect())
            }
            TensorData::Int(v) => {
                TensorData::Int(map.iter().map(|m| m.map_or(0, |i| v[i])).collect())
            }
            TensorData::Bool(v) => {
                TensorData::Bool(map.iter().map(|m| m.is_some_and(|i| v[i])).collect())
            }
        }
    }
}

/// A dense row-major tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub data: TensorData,
}

impl Tensor {
    /// A float tensor of `dtype` (values rounded to it).
    pub fn float(dtype: DType, shape: Vec<usize>, data: Vec<f64>) -> Tensor {
        let data = data.into_iter().map(|x| round_to(dtype, x)).collect();
        Tensor {
            dtype,
            shape,
            data: TensorData::Float(data),
        }
    }
    pub fn f64(shape: Vec<usize>, data: Vec<f64>) -> Tensor {
        Tensor {
            dtype: DType::F64,
            shape,
            data: TensorData::Float(data),
        }
    }
    pub fn f32(shape: Vec<usize>, data: Vec<f32>) -> Tensor {
        let data = data.into_iter().map(f64::from).collect();
        Tensor {
            dtype: DType::F32,
            shape,
            data: TensorData::Float(data),
        }
    }
    pub fn int(dtype: DType, shape: Vec<usize>, data: Vec<i64>) -> Tensor {
        let data = data.into_iter().map(|x| wrap_int(dtype, x)).collect();
        Tensor {
            dtype,
            shape,
            data: TensorData::Int(data),
        }
    }
    pub fn bool(shape: Vec<usize>, data: Vec<bool>) -> Tensor {
        Tensor {
            dtype: DType::Bool,
            shape,
            data: TensorData::Bool(data),
        }
    }
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    /// The float elements, if this is a float tensor.
    pub fn as_f64(&self) -> Option<&[f64]> {
        match &self.data {
            TensorData::Float(v) => Some(v),
            _ => None,
        }
    }
    /// Every element as f64 (ints converted, bools as 0/1).
    pub fn to_f64_vec(&self) -> Vec<f64> {
        match &self.data {
            TensorData::Float(v) => v.clone(),
            TensorData::Int(v) => v.iter().map(|x| *x as f64).collect(),
            TensorData::Bool(v) => v.iter().map(|x| f64::from(u8::from(*x))).collect(),
        }
    }
    /// Every element as f32 (for comparisons against a runtime's f32 buffers).
    pub fn to_f32_vec(&self) -> Vec<f32> {
        self.to_f64_vec().into_iter().map(|x| x as f32).collect()
    }
}

/// How floats are rounded (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Precision {
    /// Keep every float in f64.
    #[default]
    F64,
    /// Round every float result to its declared dtype.
    Declared,
}

/// What varies between runs of the same graph.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunOptions {
    /// The run's seed (`RandUniform`).
    pub seed: u64,
    /// The training step (`RandUniform`).
    pub step: u64,
    pub precision: Precision,
}

/// Named outputs and state updates of one run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunOutput {
    pub outputs: BTreeMap<String, Tensor>,
    pub updates: BTreeMap<String, Tensor>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InterpError {
    #[error(transparent)]
    Ir(#[from] IrError),
    #[error("missing {kind} `{name}`")]
    Missing { kind: &'static str, name: String },
    #[error("{kind} `{name}`: expected {expected}, got {got}")]
    BadTensor {
        kind: &'static str,
        name: String,
        expected: String,
        got: String,
    },
    #[error("{op}: index {index} out of range 0..{size}")]
    IndexOutOfRange {
        op: &'static str,
        index: i64,
        size: usize,
    },
    #[error("{op}: integer division by zero")]
    DivByZero { op: &'static str },
}

/// Rounds `x` to the nearest value of a float dtype (identity for f64 and non-floats).
pub fn round_to(dtype: DType, x: f64) -> f64 {
    match dtype {
        DType::F32 => x as f32 as f64,
        DType::BF16 => round_binary(x, 7, -126, 127),
        DType::F16 => round_binary(x, 10, -14, 15),
        DType::F64 | DType::I32 | DType::I64 | DType::Bool => x,
    }
}

/// Round to nearest even with `mbits` explicit mantissa bits and normal exponents
/// `emin..=emax` (subnormals below, infinity above). Exact in f64 for these small formats.
fn round_binary(x: f64, mbits: i32, emin: i32, emax: i32) -> f64 {
    if !x.is_finite() || x == 0.0 {
        return x;
    }
    let e = ((x.abs().to_bits() >> 52) as i32 - 1023).max(emin);
    let quantum = 2f64.powi(e - mbits);
    let r = (x / quantum).round_ties_even() * quantum;
    let max = (2.0 - 2f64.powi(-mbits)) * 2f64.powi(emax);
    if r.abs() > max {
        f64::INFINITY.copysign(x)
    } else {
        r
    }
}

fn wrap_int(dtype: DType, x: i64) -> i64 {
    match dtype {
        DType::I32 => x as i32 as i64,
        _ => x,
    }
}

/// Draws every param's initial value as `rng::init_element` defines.
pub fn init_params(
    graph: &Graph,
    bindings: &Bindings,
    seed: u64,
) -> Result<HashMap<String, Tensor>, InterpError> {
    let mut out = HashMap::new();
    for v in graph.params() {
        if let Op::Param {
            name,
            shape,
            dtype,
            init,
            ..
        } = graph.node(v).op()
        {
            let shape = bind_shape(shape, bindings)?;
            let key = rng::param_key(seed, name);
            let n: usize = shape.iter().product();
            let data = (0..n as u64)
                .map(|i| rng::init_element(init, key, i))
                .collect();
            out.insert(name.clone(), Tensor::float(*dtype, shape, data));
        }
    }
    Ok(out)
}

/// Runs the graph: evaluates what its outputs and updates need and returns them by name.
pub fn run(
    graph: &Graph,
    bindings: &Bindings,
    inputs: &HashMap<String, Tensor>,
    params: &HashMap<String, Tensor>,
    opts: &RunOptions,
) -> Result<RunOutput, InterpError> {
    let wanted: Vec<ValueId> = graph
        .outputs()
        .iter()
        .map(|o| o.value)
        .chain(graph.updates().iter().map(|u| u.value))
        .collect();
    let vals = eval(graph, bindings, inputs, params, opts, &wanted)?;
    let mut out = RunOutput::default();
    for o in graph.outputs() {
        out.outputs.insert(o.name.clone(), vals[&o.value].clone());
    }
    for u in graph.updates() {
        out.updates.insert(u.target.clone(), vals[&u.value].clone());
    }
    Ok(out)
}

/// Evaluates the values in `wanted` (and whatever they depend on); returns every computed value.
pub fn eval(
    graph: &Graph,
    bindings: &Bindings,
    inputs: &HashMap<String, Tensor>,
    params: &HashMap<String, Tensor>,
    opts: &RunOptions,
    wanted: &[ValueId],
) -> Result<HashMap<ValueId, Tensor>, InterpError> {
    let g = graph.bind(bindings)?;
    let mut needed: HashSet<ValueId> = HashSet::new();
    let mut stack: Vec<ValueId> = wanted.to_vec();
    while let Some(v) = stack.pop() {
        if !g.contains(v) {
            return Err(IrError::UnknownValue { value: v }.into());
        }
        if needed.insert(v) {
            stack.extend(g.node(v).inputs().iter().copied());
        }
    }
    let mut vals: HashMap<ValueId, Tensor> = HashMap::new();
    for v in g.topo_order()? {
        if !needed.contains(&v) {
            continue;
        }
        let node = g.node(v);
        let out_shape = bind_shape(node.shape(), bindings)?;
        let args: Vec<&Tensor> = node.inputs().iter().map(|u| &vals[u]).collect();
        let mut t = eval_op(
            node.op(),
            &args,
            node.dtype(),
            out_shape,
            inputs,
            params,
            opts,
        )?;
        // In F64 mode nothing rounds, not even an explicit cast between float types.
        if opts.precision == Precision::Declared && t.dtype.is_float() {
            if let TensorData::Float(d) = &mut t.data {
                for x in d.iter_mut() {
                    *x = round_to(t.dtype, *x);
                }
            }
        }
        vals.insert(v, t);
    }
    Ok(vals)
}

fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// Row-major multi-index of flat index `i`.
fn unravel(mut i: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for a in (0..shape.len()).rev() {
        if shape[a] > 0 {
            idx[a] = i % shape[a];
            i /= shape[a];
        }
    }
    idx
}

/// For every element of a row-major `shape`, `sum(index[a] * step[a])`: the source offset of a
/// strided view (a broadcast has step 0 on new axes, a permute the source stride of its axis).
/// An odometer, so no per-element allocation: broadcasts of large constants stay cheap.
fn strided_offsets(shape: &[usize], step: &[usize]) -> Vec<Option<usize>> {
    let n: usize = shape.iter().product();
    let mut out = Vec::with_capacity(n);
    if n == 0 {
        return out;
    }
    let r = shape.len();
    let mut idx = vec![0usize; r];
    let mut off = 0usize;
    for _ in 0..n {
        out.push(Some(off));
        let mut a = r;
        while a > 0 {
            a -= 1;
            idx[a] += 1;
            off += step[a];
            if idx[a] < shape[a] {
                break;
            }
            off -= step[a] * shape[a];
            idx[a] = 0;
        }
    }
    out
}

fn ravel(idx: &[usize], strides: &[usize]) -> usize {
    idx.iter().zip(strides).map(|(i, s)| i * s).sum()
}

fn floats(t: &Tensor) -> &[f64] {
    match &t.data {
        TensorData::Float(v) => v,
        // Type rules guarantee float operands where this is called; an int/bool here is an IR bug
        // the verifier would have reported.
        _ => panic!("interp: expected a float tensor, got {:?}", t.dtype),
    }
}

fn ints(t: &Tensor) -> &[i64] {
    match &t.data {
        TensorData::Int(v) => v,
        _ => panic!("interp: expected an int tensor, got {:?}", t.dtype),
    }
}

fn source(
    kind: &'static str,
    name: &str,
    map: &HashMap<String, Tensor>,
    dtype: DType,
    shape: &[usize],
    precision: Precision,
) -> Result<Tensor, InterpError> {
    let t = map.get(name).ok_or_else(|| InterpError::Missing {
        kind,
        name: name.to_string(),
    })?;
    let same_class = (dtype.is_float() && t.dtype.is_float())
        || (dtype.is_int() && t.dtype.is_int())
        || (dtype == DType::Bool && t.dtype == DType::Bool);
    if t.shape != shape || !same_class || t.data.len() != t.numel() {
        return Err(InterpError::BadTensor {
            kind,
            name: name.to_string(),
            expected: format!("{dtype}{shape:?}"),
            got: format!("{}{:?} with {} elements", t.dtype, t.shape, t.data.len()),
        });
    }
    let data = match &t.data {
        TensorData::Float(v) if precision == Precision::F64 => TensorData::Float(v.clone()),
        TensorData::Float(v) => TensorData::Float(v.iter().map(|x| round_to(dtype, *x)).collect()),
        TensorData::Int(v) => TensorData::Int(v.iter().map(|x| wrap_int(dtype, *x)).collect()),
        TensorData::Bool(v) => TensorData::Bool(v.clone()),
    };
    Ok(Tensor {
        dtype,
        shape: shape.to_vec(),
        data,
    })
}

fn index(op: &'static str, i: i64, size: usize) -> Result<usize, InterpError> {
    if i < 0 || i as u64 >= size as u64 {
        Err(InterpError::IndexOutOfRange { op, index: i, size })
    } else {
        Ok(i as usize)
    }
}

fn erf(x: f64) -> f64 {
    libm::erf(x)
}

fn nan_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.max(b)
    }
}

fn nan_min(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.min(b)
    }
}

fn eval_op(
    op: &Op,
    args: &[&Tensor],
    dtype: DType,
    shape: Vec<usize>,
    inputs: &HashMap<String, Tensor>,
    params: &HashMap<String, Tensor>,
    opts: &RunOptions,
) -> Result<Tensor, InterpError> {
    let n: usize = shape.iter().product();
    let make = |data: TensorData| Tensor {
        dtype,
        shape: shape.clone(),
        data,
    };
    let out = match op {
        Op::Input { name, .. } => {
            return source("input", name, inputs, dtype, &shape, opts.precision)
        }
        Op::Param { name, .. } => {
            return source("param", name, params, dtype, &shape, opts.precision)
        }
        Op::Constant { value, .. } => make(if dtype.is_float() {
            TensorData::Float(vec![*value])
        } else if dtype.is_int() {
            TensorData::Int(vec![wrap_int(dtype, *value as i64)])
        } else {
            TensorData::Bool(vec![*value != 0.0])
        }),
        Op::Iota { axis, .. } => {
            let vals: Vec<i64> = (0..n).map(|i| unravel(i, &shape)[*axis] as i64).collect();
            make(if dtype.is_float() {
                TensorData::Float(vals.iter().map(|x| *x as f64).collect())
            } else {
                TensorData::Int(vals)
            })
        }
        Op::RandUniform { stream, .. } => {
            let key = rng::stream_key(opts.seed, opts.step, *stream);
            make(TensorData::Float(
                (0..n as u64)
                    .map(|i| f64::from(rng::uniform_f32(key, i)))
                    .collect(),
            ))
        }
        Op::Unary(u) => match &args[0].data {
            TensorData::Float(x) => {
                let f = |x: f64| match u {
                    UnaryOp::Neg => -x,
                    UnaryOp::Exp => x.exp(),
                    UnaryOp::Log => x.ln(),
                    UnaryOp::Sqrt => x.sqrt(),
                    UnaryOp::Recip => 1.0 / x,
                    UnaryOp::Tanh => x.tanh(),
                    UnaryOp::Erf => erf(x),
                    UnaryOp::Abs => x.abs(),
                    UnaryOp::Sin => x.sin(),
                    UnaryOp::Cos => x.cos(),
                };
                make(TensorData::Float(x.iter().map(|v| f(*v)).collect()))
            }
            TensorData::Int(x) => {
                let f = |x: i64| match u {
                    UnaryOp::Neg => x.wrapping_neg(),
                    UnaryOp::Abs => x.wrapping_abs(),
                    // Type rules admit only neg/abs on ints.
                    UnaryOp::Exp
                    | UnaryOp::Log
                    | UnaryOp::Sqrt
                    | UnaryOp::Recip
                    | UnaryOp::Tanh
                    | UnaryOp::Erf
                    | UnaryOp::Sin
                    | UnaryOp::Cos => {
                        unreachable!("type rule rejects {u:?} on ints")
                    }
                };
                make(TensorData::Int(
                    x.iter().map(|v| wrap_int(dtype, f(*v))).collect(),
                ))
            }
            TensorData::Bool(_) => unreachable!("type rule rejects unary ops on bools"),
        },
        Op::Cast { to } => {
            let x = args[0];
            let round = |t: DType, v: f64| {
                if opts.precision == Precision::F64 {
                    v
                } else {
                    round_to(t, v)
                }
            };
            make(match (&x.data, to) {
                (TensorData::Float(v), t) if t.is_float() => {
                    TensorData::Float(v.iter().map(|x| round(*t, *x)).collect())
                }
                (TensorData::Float(v), t) if t.is_int() => {
                    TensorData::Int(v.iter().map(|x| wrap_int(*t, *x as i64)).collect())
                }
                (TensorData::Float(v), _) => {
                    TensorData::Bool(v.iter().map(|x| *x != 0.0).collect())
                }
                (TensorData::Int(v), t) if t.is_float() => {
                    TensorData::Float(v.iter().map(|x| round(*t, *x as f64)).collect())
                }
                (TensorData::Int(v), t) if t.is_int() => {
                    TensorData::Int(v.iter().map(|x| wrap_int(*t, *x)).collect())
                }
                (TensorData::Int(v), _) => TensorData::Bool(v.iter().map(|x| *x != 0).collect()),
                (TensorData::Bool(v), t) if t.is_float() => {
                    TensorData::Float(v.iter().map(|x| f64::from(u8::from(*x))).collect())
                }
                (TensorData::Bool(v), t) if t.is_int() => {
                    TensorData::Int(v.iter().map(|x| i64::from(*x)).collect())
                }
                (TensorData::Bool(v), _) => TensorData::Bool(v.clone()),
            })
        }
        Op::PowConst { p } => make(TensorData::Float(
            floats(args[0]).iter().map(|x| x.powf(*p)).collect(),
        )),
        Op::Binary(b) => match (&args[0].data, &args[1].data) {
            (TensorData::Float(x), TensorData::Float(y)) => {
                let f = |a: f64, c: f64| match b {
                    BinaryOp::Add => a + c,
                    BinaryOp::Sub => a - c,
                    BinaryOp::Mul => a * c,
                    BinaryOp::Div => a / c,
                    BinaryOp::Max => nan_max(a, c),
                    BinaryOp::Min => nan_min(a, c),
                };
                make(TensorData::Float(
                    x.iter().zip(y).map(|(a, c)| f(*a, *c)).collect(),
                ))
            }
            (TensorData::Int(x), TensorData::Int(y)) => {
                let mut out = Vec::with_capacity(n);
                for (a, c) in x.iter().zip(y) {
                    let r = match b {
                        BinaryOp::Add => a.wrapping_add(*c),
                        BinaryOp::Sub => a.wrapping_sub(*c),
                        BinaryOp::Mul => a.wrapping_mul(*c),
                        BinaryOp::Div => {
                            if *c == 0 {
                                return Err(InterpError::DivByZero { op: "div" });
                            }
                            a.wrapping_div(*c)
                        }
                        BinaryOp::Max => *a.max(c),
                        BinaryOp::Min => *a.min(c),
                    };
                    out.push(wrap_int(dtype, r));
                }
                make(TensorData::Int(out))
            }
            _ => unreachable!("type rule requires equal numeric dtypes"),
        },
        Op::Compare(c) => {
            fn cmp<T: PartialOrd>(c: CmpOp, a: &T, b: &T) -> bool {
                match c {
                    CmpOp::Lt => a < b,
                    CmpOp::Le => a <= b,
                    CmpOp::Gt => a > b,
                    CmpOp::Ge => a >= b,
                    CmpOp::Eq => a == b,
                    CmpOp::Ne => a != b,
                }
            }
            make(TensorData::Bool(match (&args[0].data, &args[1].data) {
                (TensorData::Float(x), TensorData::Float(y)) => {
                    x.iter().zip(y).map(|(a, b)| cmp(*c, a, b)).collect()
                }
                (TensorData::Int(x), TensorData::Int(y)) => {
                    x.iter().zip(y).map(|(a, b)| cmp(*c, a, b)).collect()
                }
                (TensorData::Bool(x), TensorData::Bool(y)) => {
                    x.iter().zip(y).map(|(a, b)| cmp(*c, a, b)).collect()
                }
                _ => unreachable!("type rule requires equal dtypes"),
            }))
        }
        Op::Select => {
            let cond = match &args[0].data {
                TensorData::Bool(c) => c,
                _ => unreachable!("type rule requires a bool condition"),
            };
            let pick = |i: usize| cond[i];
            make(match (&args[1].data, &args[2].data) {
                (TensorData::Float(a), TensorData::Float(b)) => {
                    TensorData::Float((0..n).map(|i| if pick(i) { a[i] } else { b[i] }).collect())
                }
                (TensorData::Int(a), TensorData::Int(b)) => {
                    TensorData::Int((0..n).map(|i| if pick(i) { a[i] } else { b[i] }).collect())
                }
                (TensorData::Bool(a), TensorData::Bool(b)) => {
                    TensorData::Bool((0..n).map(|i| if pick(i) { a[i] } else { b[i] }).collect())
                }
                _ => unreachable!("type rule requires equal branch dtypes"),
            })
        }
        Op::Broadcast { axes, .. } => {
            let x = args[0];
            let xs = strides(&x.shape);
            let mut kept = xs.iter();
            let step: Vec<usize> = (0..shape.len())
                .map(|a| {
                    if axes.contains(&a) {
                        0
                    } else {
                        kept.next().copied().unwrap_or(0)
                    }
                })
                .collect();
            make(x.data.remap(&strided_offsets(&shape, &step)))
        }
        Op::Reshape { .. } | Op::StopGradient => make(args[0].data.clone()),
        Op::DimConst { dim, .. } => {
            // `Graph::bind` folds every DimConst into a Constant; one left means a symbol was unbound.
            return Err(InterpError::Ir(IrError::UnboundSymbol {
                symbol: dim.to_string(),
            }));
        }
        Op::Permute { perm } => {
            let x = args[0];
            let xs = strides(&x.shape);
            let step: Vec<usize> = perm.iter().map(|p| xs[*p]).collect();
            let map = strided_offsets(&shape, &step);
            make(x.data.remap(&map))
        }
        Op::Slice {
            axis, start, step, ..
        } => {
            let x = args[0];
            let xs = strides(&x.shape);
            let start = start.as_const().unwrap_or(0) as usize;
            let map: Vec<Option<usize>> = (0..n)
                .map(|i| {
                    let mut idx = unravel(i, &shape);
                    idx[*axis] = start + idx[*axis] * (*step as usize);
                    Some(ravel(&idx, &xs))
                })
                .collect();
            make(x.data.remap(&map))
        }
        Op::Pad { axis, before, .. } => {
            let x = args[0];
            let xs = strides(&x.shape);
            let before = before.as_const().unwrap_or(0) as usize;
            let map: Vec<Option<usize>> = (0..n)
                .map(|i| {
                    let mut idx = unravel(i, &shape);
                    let j = idx[*axis];
                    if j < before || j >= before + x.shape[*axis] {
                        None
                    } else {
                        idx[*axis] = j - before;
                        Some(ravel(&idx, &xs))
                    }
                })
                .collect();
            make(x.data.remap(&map))
        }
        Op::Concat { axis } => {
            // Remap each part into its window of the output, then merge the windows.
            let mut result = make(args[0].data.remap(&vec![None; n]));
            let mut offset = 0;
            for x in args {
                let xs = strides(&x.shape);
                let map: Vec<Option<usize>> = (0..n)
                    .map(|i| {
                        let mut idx = unravel(i, &shape);
                        let j = idx[*axis];
                        if j < offset || j >= offset + x.shape[*axis] {
                            None
                        } else {
                            idx[*axis] = j - offset;
                            Some(ravel(&idx, &xs))
                        }
                    })
                    .collect();
                let part = x.data.remap(&map);
                for i in (0..n).filter(|i| map[*i].is_some()) {
                    match (&mut result.data, &part) {
                        (TensorData::Float(r), TensorData::Float(p)) => r[i] = p[i],
                        (TensorData::Int(r), TensorData::Int(p)) => r[i] = p[i],
                        (TensorData::Bool(r), TensorData::Bool(p)) => r[i] = p[i],
                        _ => unreachable!("type rule requires equal dtypes"),
                    }
                }
                offset += x.shape[*axis];
            }
            result
        }
        Op::ReduceSum { axes, .. } | Op::ReduceMax { axes, .. } => {
            let x = args[0];
            let is_max = matches!(op, Op::ReduceMax { .. });
            // Output index of an input element: the kept axes (size-1 axes under keepdim add 0).
            let kept_shape: Vec<usize> = (0..x.shape.len())
                .filter(|a| !axes.contains(a))
                .map(|a| x.shape[a])
                .collect();
            let ks = strides(&kept_shape);
            let out_of = |i: usize| {
                let idx = unravel(i, &x.shape);
                let kept: Vec<usize> = (0..idx.len())
                    .filter(|a| !axes.contains(a))
                    .map(|a| idx[a])
                    .collect();
                ravel(&kept, &ks)
            };
            match &x.data {
                TensorData::Float(v) => {
                    let init = if is_max { f64::NEG_INFINITY } else { 0.0 };
                    let mut acc = vec![init; n];
                    for (i, val) in v.iter().enumerate() {
                        let o = out_of(i);
                        acc[o] = if is_max {
                            nan_max(acc[o], *val)
                        } else {
                            acc[o] + val
                        };
                    }
                    make(TensorData::Float(acc))
                }
                TensorData::Int(v) => {
                    let init = if is_max { i64::MIN } else { 0 };
                    let mut acc = vec![init; n];
                    for (i, val) in v.iter().enumerate() {
                        let o = out_of(i);
                        acc[o] = if is_max {
                            acc[o].max(*val)
                        } else {
                            acc[o].wrapping_add(*val)
                        };
                    }
                    make(TensorData::Int(
                        acc.into_iter().map(|a| wrap_int(dtype, a)).collect(),
                    ))
                }
                TensorData::Bool(_) => unreachable!("type rule rejects bool reductions"),
            }
        }
        Op::MatMul {
            transpose_a,
            transpose_b,
        } => {
            let (a, b) = (args[0], args[1]);
            let (av, bv) = (floats(a), floats(b));
            let (ra, rb) = (a.shape.len(), b.shape.len());
            let (m, k) = if *transpose_a {
                (a.shape[ra - 1], a.shape[ra - 2])
            } else {
                (a.shape[ra - 2], a.shape[ra - 1])
            };
            let nn = if *transpose_b {
                b.shape[rb - 2]
            } else {
                b.shape[rb - 1]
            };
            let batch: usize = a.shape[..ra - 2].iter().product();
            let mut out = vec![0.0; n];
            for bi in 0..batch {
                let ao = bi * m * k;
                let bo = if rb == 2 { 0 } else { bi * k * nn };
                for i in 0..m {
                    for j in 0..nn {
                        let mut s = 0.0;
                        for p in 0..k {
                            let x = if *transpose_a {
                                av[ao + p * m + i]
                            } else {
                                av[ao + i * k + p]
                            };
                            let y = if *transpose_b {
                                bv[bo + j * k + p]
                            } else {
                                bv[bo + p * nn + j]
                            };
                            s += x * y;
                        }
                        out[bi * m * nn + i * nn + j] = s;
                    }
                }
            }
            make(TensorData::Float(out))
        }
        Op::Gather => {
            let (table, idx) = (args[0], ints(args[1]));
            let rows = table.shape[0];
            let row: usize = table.shape[1..].iter().product();
            let mut map = Vec::with_capacity(n);
            for ix in idx {
                let r = index("gather", *ix, rows)?;
                map.extend((0..row).map(|j| Some(r * row + j)));
            }
            make(table.data.remap(&map))
        }
        Op::ScatterAdd { .. } => {
            let (vals, idx) = (args[0], ints(args[1]));
            let rows = shape[0];
            let row: usize = shape[1..].iter().product();
            match &vals.data {
                TensorData::Float(v) => {
                    let mut out = vec![0.0; n];
                    for (p, ix) in idx.iter().enumerate() {
                        let r = index("scatter_add", *ix, rows)?;
                        for j in 0..row {
                            out[r * row + j] += v[p * row + j];
                        }
                    }
                    make(TensorData::Float(out))
                }
                TensorData::Int(v) => {
                    let mut out = vec![0i64; n];
                    for (p, ix) in idx.iter().enumerate() {
                        let r = index("scatter_add", *ix, rows)?;
                        for j in 0..row {
                            out[r * row + j] =
                                wrap_int(dtype, out[r * row + j].wrapping_add(v[p * row + j]));
                        }
                    }
                    make(TensorData::Int(out))
                }
                TensorData::Bool(_) => unreachable!("type rule rejects bool scatter_add"),
            }
        }
        Op::TakeAlong => {
            let (x, idx) = (args[0], ints(args[1]));
            let v = *x.shape.last().unwrap_or(&0);
            let map: Vec<Option<usize>> = idx
                .iter()
                .enumerate()
                .map(|(p, ix)| index("take_along", *ix, v).map(|j| Some(p * v + j)))
                .collect::<Result<_, _>>()?;
            make(x.data.remap(&map))
        }
        Op::PutAlong { .. } => {
            let (vals, idx) = (args[0], ints(args[1]));
            let v = *shape.last().unwrap_or(&0);
            let mut map = vec![None; n];
            for (p, ix) in idx.iter().enumerate() {
                map[p * v + index("put_along", *ix, v)?] = Some(p);
            }
            make(vals.data.remap(&map))
        }
        Op::Attention(spec) => make(TensorData::Float(attention(spec, args, None)?)),
        Op::AttentionBackward { spec, wrt } => {
            make(TensorData::Float(attention(spec, args, Some(*wrt))?))
        }
    };
    Ok(out)
}

/// The reference semantics of `Attention` and `AttentionBackward`: the composition they replace,
/// `softmax(where(mask, scale · q·kᵀ + bias, -inf)) · v`, row by row in plain loops, and its exact
/// gradient `dS = P ∘ (dP − rowsum(P ∘ dP))` with `dP = dO·vᵀ` (the composition's VJP up to
/// rounding: its softmax VJP also sends an exactly-zero total through the row max). A row whose
/// keys are all masked gives NaN, as the composition does. `wrt = None` is the forward.
fn attention(
    spec: &AttnSpec,
    args: &[&Tensor],
    wrt: Option<AttnGrad>,
) -> Result<Vec<f64>, InterpError> {
    let (q, k, v) = (floats(args[0]), floats(args[1]), floats(args[2]));
    let [nb, nh, t, d] = args[0].shape[..] else {
        unreachable!("type rule: q is rank 4")
    };
    let (nhk, s) = (args[1].shape[1], args[1].shape[2]);
    let group = nh / nhk.max(1);
    let first_extra = if wrt.is_some() { 5 } else { 3 };
    let (bias_at, prefix_at, key_at) = spec.extra_positions();
    let bias = bias_at.map(|i| floats(args[first_extra + i]));
    let lens = |at: Option<usize>| at.map(|i| ints(args[first_extra + i]));
    let (prefix, key_len) = (lens(prefix_at), lens(key_at));
    let dout = wrt.map(|_| floats(args[4]));
    let off = s as i64 - t as i64;
    let visible = |b: usize, i: usize, j: usize| -> bool {
        let (i, j) = (i as i64 + off, j as i64);
        let m = match spec.mask {
            AttnMask::Full => true,
            AttnMask::Causal => j <= i,
            AttnMask::Local { window } => j <= i && j > i - window,
            AttnMask::Prefix => j <= i || prefix.is_some_and(|p| j < p[b]),
        };
        m && key_len.is_none_or(|l| j < l[b])
    };
    let out_len = match wrt {
        None | Some(AttnGrad::Q) => nb * nh * t * d,
        Some(AttnGrad::K) | Some(AttnGrad::V) => nb * nhk * s * d,
        Some(AttnGrad::Bias) => nh * t * s,
    };
    let mut out = vec![0.0; out_len];
    let mut p = vec![0.0; s];
    let mut dp = vec![0.0; s];
    for b in 0..nb {
        for h in 0..nh {
            let hk = h / group.max(1);
            let qo = |i: usize| ((b * nh + h) * t + i) * d;
            let ko = |j: usize| ((b * nhk + hk) * s + j) * d;
            for i in 0..t {
                // Scores, masked, then the composition's softmax: max, sub, exp, sum, div.
                let mut m = f64::NEG_INFINITY;
                for (j, pj) in p.iter_mut().enumerate() {
                    let mut acc = 0.0;
                    for c in 0..d {
                        acc += q[qo(i) + c] * k[ko(j) + c];
                    }
                    let mut x = acc * spec.scale;
                    if let Some(bias) = bias {
                        x += bias[(h * t + i) * s + j];
                    }
                    *pj = if visible(b, i, j) {
                        x
                    } else {
                        f64::NEG_INFINITY
                    };
                    m = nan_max(m, *pj);
                }
                let mut sum = 0.0;
                for pj in p.iter_mut() {
                    *pj = (*pj - m).exp();
                    sum += *pj;
                }
                for pj in p.iter_mut() {
                    *pj /= sum;
                }
                let Some(g) = wrt else {
                    for c in 0..d {
                        out[qo(i) + c] = (0..s).map(|j| p[j] * v[ko(j) + c]).sum();
                    }
                    continue;
                };
                let dout = dout.unwrap_or(&[]);
                let mut pdp = 0.0;
                for j in 0..s {
                    dp[j] = (0..d).map(|c| dout[qo(i) + c] * v[ko(j) + c]).sum();
                    pdp += p[j] * dp[j];
                }
                for j in 0..s {
                    // dS: gradient of the pre-softmax score (after scale and bias).
                    let ds = p[j] * (dp[j] - pdp);
                    match g {
                        AttnGrad::Q => {
                            for c in 0..d {
                                out[qo(i) + c] += spec.scale * ds * k[ko(j) + c];
                            }
                        }
                        AttnGrad::K => {
                            for c in 0..d {
                                out[ko(j) + c] += spec.scale * ds * q[qo(i) + c];
                            }
                        }
                        AttnGrad::V => {
                            for c in 0..d {
                                out[ko(j) + c] += p[j] * dout[qo(i) + c];
                            }
                        }
                        AttnGrad::Bias => out[(h * t + i) * s + j] += ds,
                    }
                }
            }
        }
    }
    Ok(out)
}
