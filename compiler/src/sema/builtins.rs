//! The language's primitive functions and constants: the small stated set everything else (the
//! stdlib) is written in. Each builtin maps directly onto one or a few IR ops.
//!
//! | builtin | meaning |
//! |---|---|
//! | `exp log sqrt rsqrt tanh erf abs sin cos recip` | elementwise (on numbers: computed now) |
//! | `maximum(a, b)`, `minimum(a, b)`, `where(cond, a, b)` | elementwise with broadcasting |
//! | `cast(x, dtype)` | dtype conversion |
//! | `sum / mean / max(x, axis = none, keepdim = false)` | reductions (`axis`: int or list; none = all) |
//! | `reshape(x, dims)`, `transpose(x, a = -2, b = -1)`, `permute(x, perm)`, `broadcast(x, dims)`, `concat(xs, axis)` | layout |
//! | `gather(table, idx)`, `take_along(x, idx)` | embedding lookup; pick along the last axis |
//! | `arange(n, dtype = i32)`, `full(dims, value, dtype = f32)`, `rand_uniform(like)` | tensors from nothing |
//! | `mask_matrix(mask, tq, tk)` | a mask value as a bool tensor |
//! | `banded(window)`, `prefix(len)`, `padding(len)` | mask values (`causal`, `full` are constants) |
//! | `dim(x, axis)`, `rank(x)` | shape queries |
//! | `error(message, ...)` | stop with a diagnostic at the call |
//!
//! Constants: `causal`, `full`, `inf`, `pi`, `training`, the dtype names, and byte units `KiB MiB
//! GiB KB MB GB`.

use super::diag::Loc;
use super::eval::{ArgVal, Eval, R};
use super::value::{Mask, Value};
use crate::ir::{BinaryOp as IrBin, CmpOp, DType, Dim, Op, UnaryOp as IrUn, ValueId};

pub struct Builtin {
    pub name: &'static str,
    /// Parameter names; a trailing `?` marks an optional one.
    pub params: &'static [&'static str],
}

macro_rules! builtins {
    ($($name:literal => [$($p:literal),*]),* $(,)?) => {
        pub const BUILTINS: &[Builtin] = &[$(Builtin { name: $name, params: &[$($p),*] }),*];
    };
}

builtins! {
    "exp" => ["x"], "log" => ["x"], "sqrt" => ["x"], "rsqrt" => ["x"], "tanh" => ["x"],
    "erf" => ["x"], "abs" => ["x"], "sin" => ["x"], "cos" => ["x"], "recip" => ["x"],
    "maximum" => ["a", "b"], "minimum" => ["a", "b"], "where" => ["cond", "a", "b"],
    "cast" => ["x", "dtype"],
    "sum" => ["x", "axis?", "keepdim?"], "mean" => ["x", "axis?", "keepdim?"],
    "max" => ["x", "axis?", "keepdim?"],
    "reshape" => ["x", "dims"], "transpose" => ["x", "a?", "b?"], "permute" => ["x", "perm"],
    "broadcast" => ["x", "dims"], "concat" => ["xs", "axis?"],
    "gather" => ["table", "idx"], "take_along" => ["x", "idx"],
    "arange" => ["n", "dtype?"], "full" => ["dims", "value", "dtype?"], "rand_uniform" => ["like"],
    "mask_matrix" => ["mask", "tq", "tk"],
    "banded" => ["window"], "prefix" => ["len"], "padding" => ["len"],
    "dim" => ["x", "axis"], "rank" => ["x"],
    "error" => ["message", "value?"],
}

pub const DTYPES: &[&str] = &["f32", "f64", "bf16", "f16", "i32", "i64", "bool"];
pub const CONSTANTS: &[&str] = &[
    "causal", "full", "inf", "pi", "training", "f32", "f64", "bf16", "f16", "i32", "i64", "bool",
    "KiB", "MiB", "GiB", "KB", "MB", "GB",
];
/// Data-side transforms an objective may request; the runtime implements them.
pub const DATA_TRANSFORMS: &[&str] = &["span_corrupt", "pack", "prefix_split"];

pub fn is_builtin(name: &str) -> bool {
    BUILTINS.iter().any(|b| b.name == name)
}

pub fn builtin(name: &str) -> Option<&'static Builtin> {
    BUILTINS.iter().find(|b| b.name == name)
}

pub fn is_constant(name: &str) -> bool {
    CONSTANTS.contains(&name)
}

pub fn constant(name: &str, training: bool) -> Option<Value> {
    Some(match name {
        "causal" => Value::Mask(Mask::Causal),
        "full" => Value::Mask(Mask::Full),
        "inf" => Value::Float(f64::INFINITY),
        "pi" => Value::Float(std::f64::consts::PI),
        "training" => Value::Bool(training),
        "KiB" => Value::Int(Dim::c(1 << 10)),
        "MiB" => Value::Int(Dim::c(1 << 20)),
        "GiB" => Value::Int(Dim::c(1 << 30)),
        "KB" => Value::Int(Dim::c(1_000)),
        "MB" => Value::Int(Dim::c(1_000_000)),
        "GB" => Value::Int(Dim::c(1_000_000_000)),
        other => Value::DType(DType::from_name(other)?),
    })
}

/// Arguments bound to a builtin's parameter names.
struct Args {
    vals: Vec<Option<(Value, Loc)>>,
    call: Loc,
}

impl Args {
    fn get(&self, i: usize) -> Option<&(Value, Loc)> {
        self.vals.get(i).and_then(|v| v.as_ref())
    }
}

fn bind(ev: &Eval, b: &Builtin, args: Vec<ArgVal>, call: Loc) -> R<Args> {
    let mut vals: Vec<Option<(Value, Loc)>> = vec![None; b.params.len()];
    let pname = |p: &str| p.trim_end_matches('?').to_string();
    let mut pos = 0;
    for a in args {
        let i = match &a.name {
            None => {
                if pos >= b.params.len() {
                    return Err(ev.err_help(
                        "sema::too_many_args",
                        a.loc,
                        format!("`{}` takes {} argument(s)", b.name, b.params.len()),
                        format!("`{}` takes: {}", b.name, b.params.join(", ")),
                    ));
                }
                pos += 1;
                pos - 1
            }
            Some(n) => match b.params.iter().position(|p| pname(p) == *n) {
                Some(i) => i,
                None => {
                    return Err(ev.err_help(
                        "sema::unknown_argument",
                        a.loc,
                        format!("`{}` has no parameter `{n}`", b.name),
                        format!("`{}` takes: {}", b.name, b.params.join(", ")),
                    ))
                }
            },
        };
        if vals[i].is_some() {
            return Err(ev.err(
                "sema::duplicate_argument",
                a.loc,
                format!("argument `{}` is given twice", pname(b.params[i])),
            ));
        }
        vals[i] = Some((a.value, a.loc));
    }
    for (i, p) in b.params.iter().enumerate() {
        if vals[i].is_none() && !p.ends_with('?') {
            return Err(ev.err_help(
                "sema::missing_argument",
                call,
                format!("`{}` needs an argument for `{p}`", b.name),
                format!("`{}` takes: {}", b.name, b.params.join(", ")),
            ));
        }
    }
    Ok(Args { vals, call })
}

fn tensor(ev: &Eval, v: &(Value, Loc), what: &str) -> R<ValueId> {
    match &v.0 {
        Value::Tensor(t) => Ok(*t),
        other => Err(ev.err(
            "sema::type",
            v.1,
            format!("`{what}` must be a tensor, found {}", other.kind()),
        )),
    }
}

fn const_int(ev: &Eval, v: &(Value, Loc), what: &str) -> R<i64> {
    match &v.0 {
        Value::Int(d) => d.as_const().ok_or_else(|| {
            ev.err(
                "sema::symbolic",
                v.1,
                format!("`{what}` must be a fixed integer, found `{d}`"),
            )
        }),
        other => Err(ev.err(
            "sema::type",
            v.1,
            format!("`{what}` must be an integer, found {}", other.kind()),
        )),
    }
}

fn int_dim(ev: &Eval, v: &(Value, Loc), what: &str) -> R<Dim> {
    match &v.0 {
        Value::Int(d) => Ok(d.clone()),
        other => Err(ev.err(
            "sema::type",
            v.1,
            format!("`{what}` must be an integer, found {}", other.kind()),
        )),
    }
}

fn dims_list(ev: &Eval, v: &(Value, Loc), what: &str) -> R<Vec<Dim>> {
    match &v.0 {
        Value::List(xs) => xs
            .iter()
            .map(|x| match x {
                Value::Int(d) => Ok(d.clone()),
                o => Err(ev.err(
                    "sema::type",
                    v.1,
                    format!("`{what}` must list integers, found {}", o.kind()),
                )),
            })
            .collect(),
        other => Err(ev.err(
            "sema::type",
            v.1,
            format!("`{what}` must be a list of dims, found {}", other.kind()),
        )),
    }
}

fn dtype_arg(ev: &Eval, v: Option<&(Value, Loc)>, default: DType) -> R<DType> {
    match v {
        None => Ok(default),
        Some((Value::DType(d), _)) => Ok(*d),
        Some((o, l)) => Err(ev.err(
            "sema::type",
            *l,
            format!("expected a dtype (f32, i32, ...), found {}", o.kind()),
        )),
    }
}

fn norm_axis(ev: &Eval, axis: i64, rank: usize, loc: Loc) -> R<usize> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    if a < 0 || a >= r {
        return Err(ev.err(
            "shape::axis",
            loc,
            format!("axis {axis} is out of range for rank {rank}"),
        ));
    }
    Ok(a as usize)
}

fn node(ev: &mut Eval, op: Op, ins: &[ValueId], loc: Loc) -> R<ValueId> {
    ev.lower.node(op, ins).map_err(|e| ev.ir_err(loc, e))
}

pub fn call(ev: &mut Eval, name: &str, args: Vec<ArgVal>, loc: Loc) -> R<Value> {
    let b = builtin(name).expect("checked by caller");
    let a = bind(ev, b, args, loc)?;
    let arg = |i: usize| a.get(i).expect("required argument bound");
    match name {
        "exp" | "log" | "sqrt" | "rsqrt" | "tanh" | "erf" | "abs" | "sin" | "cos" | "recip" => {
            let (v, l) = arg(0);
            match v {
                Value::Tensor(t) => {
                    let t = *t;
                    let v = match name {
                        "rsqrt" => {
                            let s = node(ev, Op::Unary(IrUn::Sqrt), &[t], loc)?;
                            node(ev, Op::Unary(IrUn::Recip), &[s], loc)?
                        }
                        _ => node(ev, Op::Unary(unary_op(name)), &[t], loc)?,
                    };
                    Ok(Value::Tensor(v))
                }
                Value::Int(d) if name == "abs" => match d.as_const() {
                    Some(n) => {
                        Ok(Value::Int(Dim::c(n.checked_abs().ok_or_else(|| {
                            ev.err("sema::overflow", *l, "integer overflow")
                        })?)))
                    }
                    None => Err(ev.err("sema::symbolic", *l, "`abs` of a run dim")),
                },
                other => {
                    let x = ev.as_float(other, *l)?;
                    Ok(Value::Float(match name {
                        "exp" => x.exp(),
                        "log" => x.ln(),
                        "sqrt" => x.sqrt(),
                        "rsqrt" => 1.0 / x.sqrt(),
                        "tanh" => x.tanh(),
                        "erf" => libm::erf(x),
                        "abs" => x.abs(),
                        "sin" => x.sin(),
                        "cos" => x.cos(),
                        _ => 1.0 / x,
                    }))
                }
            }
        }
        "maximum" | "minimum" => {
            let (x, y) = (arg(0).clone(), arg(1).clone());
            if !matches!(x.0, Value::Tensor(_)) && !matches!(y.0, Value::Tensor(_)) {
                let (p, q) = (ev.as_float(&x.0, x.1)?, ev.as_float(&y.0, y.1)?);
                return Ok(match (&x.0, &y.0) {
                    (Value::Int(i), Value::Int(j)) => {
                        let (i, j) = (i.as_const().unwrap_or(0), j.as_const().unwrap_or(0));
                        Value::Int(Dim::c(if name == "maximum" {
                            i.max(j)
                        } else {
                            i.min(j)
                        }))
                    }
                    _ => Value::Float(if name == "maximum" {
                        p.max(q)
                    } else {
                        p.min(q)
                    }),
                });
            }
            let ids = ev.unify(&[x, y], loc, None)?;
            let op = if name == "maximum" {
                IrBin::Max
            } else {
                IrBin::Min
            };
            Ok(Value::Tensor(node(ev, Op::Binary(op), &ids, loc)?))
        }
        "where" => {
            let (c, x, y) = (arg(0).clone(), arg(1).clone(), arg(2).clone());
            if let Value::Bool(b) = c.0 {
                return Ok(if b { x.0 } else { y.0 });
            }
            let ct = tensor(ev, &c, "cond")?;
            if ev.lower.ty(ct).dtype != DType::Bool {
                return Err(ev.err(
                    "shape::dtype",
                    c.1,
                    format!(
                        "`where` needs a bool condition, found {}",
                        ev.lower.type_str(ct)
                    ),
                ));
            }
            let hint = match (&x.0, &y.0) {
                (Value::Float(_), _) | (_, Value::Float(_)) => DType::F32,
                _ => DType::I32,
            };
            // The branches decide the dtype; the condition only broadcasts.
            let branch = ev.unify(&[x, y], loc, Some(hint))?;
            let ids = ev.unify(
                &[
                    (Value::Tensor(ct), c.1),
                    (Value::Tensor(branch[0]), loc),
                    (Value::Tensor(branch[1]), loc),
                ],
                loc,
                None,
            )?;
            Ok(Value::Tensor(node(ev, Op::Select, &ids, loc)?))
        }
        "cast" => {
            let t = tensor(ev, arg(0), "x")?;
            let to = dtype_arg(ev, Some(arg(1)), DType::F32)?;
            if ev.lower.ty(t).dtype == to {
                return Ok(Value::Tensor(t));
            }
            Ok(Value::Tensor(node(ev, Op::Cast { to }, &[t], loc)?))
        }
        "sum" | "mean" | "max" => {
            let t = tensor(ev, arg(0), "x")?;
            let ty = ev.lower.ty(t);
            let rank = ty.shape.len();
            let axes: Vec<usize> = match a.get(1) {
                None | Some((Value::None, _)) => (0..rank).collect(),
                Some(v @ (Value::Int(_), _)) => {
                    vec![norm_axis(ev, const_int(ev, v, "axis")?, rank, v.1)?]
                }
                Some((Value::List(xs), l)) => {
                    let mut out = Vec::new();
                    for x in xs {
                        let i = const_int(ev, &(x.clone(), *l), "axis")?;
                        out.push(norm_axis(ev, i, rank, *l)?);
                    }
                    out.sort_unstable();
                    out.dedup();
                    out
                }
                Some((o, l)) => {
                    return Err(ev.err(
                        "sema::type",
                        *l,
                        format!("`axis` must be an integer or a list, found {}", o.kind()),
                    ))
                }
            };
            let keepdim = match a.get(2) {
                None => false,
                Some((Value::Bool(b), _)) => *b,
                Some((o, l)) => {
                    return Err(ev.err(
                        "sema::type",
                        *l,
                        format!("`keepdim` must be a bool, found {}", o.kind()),
                    ))
                }
            };
            if name == "max" {
                return Ok(Value::Tensor(node(
                    ev,
                    Op::ReduceMax { axes, keepdim },
                    &[t],
                    loc,
                )?));
            }
            let s = node(
                ev,
                Op::ReduceSum {
                    axes: axes.clone(),
                    keepdim,
                },
                &[t],
                loc,
            )?;
            if name == "sum" {
                return Ok(Value::Tensor(s));
            }
            if !ty.dtype.is_float() {
                return Err(ev.err("shape::dtype", loc, "`mean` needs a float tensor"));
            }
            let mut n = Dim::c(1);
            for ax in &axes {
                n = n.mul(&ty.shape[*ax]);
            }
            let count = match n.as_const() {
                Some(c) => node(
                    ev,
                    Op::Constant {
                        value: c as f64,
                        dtype: ty.dtype,
                    },
                    &[],
                    loc,
                )?,
                None => node(
                    ev,
                    Op::DimConst {
                        dim: n,
                        dtype: ty.dtype,
                    },
                    &[],
                    loc,
                )?,
            };
            let ids = ev.unify(
                &[(Value::Tensor(s), loc), (Value::Tensor(count), loc)],
                loc,
                None,
            )?;
            Ok(Value::Tensor(node(ev, Op::Binary(IrBin::Div), &ids, loc)?))
        }
        "reshape" => {
            let t = tensor(ev, arg(0), "x")?;
            let mut dims = dims_list(ev, arg(1), "dims")?;
            let total = ev.lower.ty(t).numel();
            let unknown: Vec<usize> = dims
                .iter()
                .enumerate()
                .filter(|(_, d)| d.as_const() == Some(-1))
                .map(|(i, _)| i)
                .collect();
            if unknown.len() > 1 {
                return Err(ev.err(
                    "shape::reshape",
                    arg(1).1,
                    "at most one dim of a reshape may be -1",
                ));
            }
            if let [i] = unknown[..] {
                let mut known = Dim::c(1);
                for (j, d) in dims.iter().enumerate() {
                    if j != i {
                        known = known.mul(d);
                    }
                }
                let q = known
                    .as_const()
                    .filter(|k| *k > 0)
                    .and_then(|k| total.div_exact(k));
                match q {
                    Some(q) => dims[i] = q,
                    None => {
                        return Err(ev.err(
                            "shape::reshape",
                            arg(1).1,
                            format!("cannot infer the -1 dim: {total} elements into {known}"),
                        ))
                    }
                }
            }
            Ok(Value::Tensor(node(
                ev,
                Op::Reshape { shape: dims },
                &[t],
                loc,
            )?))
        }
        "transpose" => {
            let t = tensor(ev, arg(0), "x")?;
            let rank = ev.lower.ty(t).shape.len();
            let ax = |ev: &Eval, i: usize, default: i64| -> R<usize> {
                match a.get(i) {
                    None => norm_axis(ev, default, rank, a.call),
                    Some(v) => norm_axis(ev, const_int(ev, v, "axis")?, rank, v.1),
                }
            };
            let (x, y) = (ax(ev, 1, -2)?, ax(ev, 2, -1)?);
            let mut perm: Vec<usize> = (0..rank).collect();
            perm.swap(x, y);
            Ok(Value::Tensor(node(ev, Op::Permute { perm }, &[t], loc)?))
        }
        "permute" => {
            let t = tensor(ev, arg(0), "x")?;
            let rank = ev.lower.ty(t).shape.len();
            let Value::List(xs) = &arg(1).0 else {
                return Err(ev.err("sema::type", arg(1).1, "`perm` must be a list of axes"));
            };
            let mut perm = Vec::new();
            for x in xs {
                let i = const_int(ev, &(x.clone(), arg(1).1), "perm")?;
                perm.push(norm_axis(ev, i, rank, arg(1).1)?);
            }
            let mut sorted = perm.clone();
            sorted.sort_unstable();
            if sorted != (0..rank).collect::<Vec<_>>() {
                return Err(ev.err(
                    "shape::permute",
                    arg(1).1,
                    format!("{perm:?} is not a permutation of the {rank} axes"),
                ));
            }
            Ok(Value::Tensor(node(ev, Op::Permute { perm }, &[t], loc)?))
        }
        "broadcast" => {
            let t = tensor(ev, arg(0), "x")?;
            let dims = dims_list(ev, arg(1), "dims")?;
            let src = ev.lower.ty(t).shape.clone();
            match ev.lower.broadcast_shapes(&[src, dims.clone()]) {
                Some(s) if s == dims => {}
                _ => {
                    return Err(ev.err(
                        "shape::broadcast",
                        loc,
                        format!(
                            "cannot broadcast {} to [{}]",
                            ev.lower.type_str(t),
                            dims.iter()
                                .map(|d| d.to_string())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    ))
                }
            }
            Ok(Value::Tensor(
                ev.lower
                    .broadcast_to(t, &dims)
                    .map_err(|e| ev.ir_err(loc, e))?,
            ))
        }
        "concat" => {
            let Value::List(xs) = &arg(0).0 else {
                return Err(ev.err("sema::type", arg(0).1, "`concat` takes a list of tensors"));
            };
            if xs.is_empty() {
                return Err(ev.err("shape::concat", arg(0).1, "`concat` of an empty list"));
            }
            let mut ids = Vec::new();
            for x in xs {
                ids.push(tensor(ev, &(x.clone(), arg(0).1), "xs")?);
            }
            let rank = ev.lower.ty(ids[0]).shape.len();
            let axis = match a.get(1) {
                None => 0,
                Some(v) => norm_axis(ev, const_int(ev, v, "axis")?, rank, v.1)?,
            };
            Ok(Value::Tensor(node(ev, Op::Concat { axis }, &ids, loc)?))
        }
        "gather" => {
            let (tb, ix) = (tensor(ev, arg(0), "table")?, tensor(ev, arg(1), "idx")?);
            Ok(Value::Tensor(node(ev, Op::Gather, &[tb, ix], loc)?))
        }
        "take_along" => {
            let (x, ix) = (tensor(ev, arg(0), "x")?, tensor(ev, arg(1), "idx")?);
            Ok(Value::Tensor(node(ev, Op::TakeAlong, &[x, ix], loc)?))
        }
        "arange" => {
            let n = int_dim(ev, arg(0), "n")?;
            let dtype = dtype_arg(ev, a.get(1), DType::I32)?;
            Ok(Value::Tensor(node(
                ev,
                Op::Iota {
                    shape: vec![n],
                    axis: 0,
                    dtype,
                },
                &[],
                loc,
            )?))
        }
        "full" => {
            let dims = dims_list(ev, arg(0), "dims")?;
            let dtype = dtype_arg(ev, a.get(2), DType::F32)?;
            let value = match &arg(1).0 {
                Value::Bool(b) => f64::from(u8::from(*b)),
                v => ev.as_float(v, arg(1).1)?,
            };
            let c = node(ev, Op::Constant { value, dtype }, &[], loc)?;
            Ok(Value::Tensor(
                ev.lower
                    .broadcast_to(c, &dims)
                    .map_err(|e| ev.ir_err(loc, e))?,
            ))
        }
        "rand_uniform" => {
            let t = tensor(ev, arg(0), "like")?;
            let shape = ev.lower.ty(t).shape.clone();
            let stream = ev.next_rng_stream();
            Ok(Value::Tensor(node(
                ev,
                Op::RandUniform { shape, stream },
                &[],
                loc,
            )?))
        }
        "banded" => {
            let w = const_int(ev, arg(0), "window")?;
            if w < 1 {
                return Err(ev.err(
                    "sema::mask",
                    arg(0).1,
                    format!("a band needs a window of at least 1, found {w}"),
                ));
            }
            Ok(Value::Mask(Mask::Banded(w)))
        }
        "prefix" | "padding" => {
            let t = tensor(ev, arg(0), "len")?;
            let ty = ev.lower.ty(t);
            if ty.shape.len() != 1 || !ty.dtype.is_int() {
                return Err(ev.err(
                    "shape::mismatch",
                    arg(0).1,
                    format!(
                        "`{name}` takes per-row lengths, an int tensor [batch]; found {}",
                        ev.lower.type_str(t)
                    ),
                ));
            }
            Ok(Value::Mask(if name == "prefix" {
                Mask::Prefix(t)
            } else {
                Mask::Padding(t)
            }))
        }
        "mask_matrix" => {
            let mask = match &arg(0).0 {
                Value::Mask(m) => m.clone(),
                Value::List(ms) => {
                    let mut out = Vec::new();
                    for m in ms {
                        match m {
                            Value::Mask(m) => out.push(m.clone()),
                            o => {
                                return Err(ev.err(
                                    "sema::type",
                                    arg(0).1,
                                    format!("expected masks, found {}", o.kind()),
                                ))
                            }
                        }
                    }
                    Mask::All(out)
                }
                o => {
                    return Err(ev.err(
                        "sema::type",
                        arg(0).1,
                        format!(
                            "`mask` must be a mask (causal, full, banded(w), ...), found {}",
                            o.kind()
                        ),
                    ))
                }
            };
            let tq = int_dim(ev, arg(1), "tq")?;
            let tk = int_dim(ev, arg(2), "tk")?;
            Ok(Value::Tensor(mask_matrix(ev, &mask, &tq, &tk, loc)?))
        }
        "dim" => {
            let t = tensor(ev, arg(0), "x")?;
            let ty = ev.lower.ty(t);
            let i = norm_axis(ev, const_int(ev, arg(1), "axis")?, ty.shape.len(), arg(1).1)?;
            Ok(Value::Int(ty.shape[i].clone()))
        }
        "rank" => {
            let t = tensor(ev, arg(0), "x")?;
            Ok(Value::Int(Dim::c(ev.lower.ty(t).shape.len() as i64)))
        }
        "error" => {
            let msg = match &arg(0).0 {
                Value::Str(s) => s.clone(),
                o => o.to_string(),
            };
            let msg = match a.get(1) {
                Some((v, _)) => format!("{msg}: {v}"),
                None => msg,
            };
            // Report at the innermost call site in user code (the stack does that).
            Err(ev.err("sema::user_error", loc, msg))
        }
        _ => Err(ev.err(
            "sema::internal",
            loc,
            format!("builtin `{name}` has no implementation"),
        )),
    }
}

fn unary_op(name: &str) -> IrUn {
    match name {
        "exp" => IrUn::Exp,
        "log" => IrUn::Log,
        "sqrt" => IrUn::Sqrt,
        "tanh" => IrUn::Tanh,
        "erf" => IrUn::Erf,
        "abs" => IrUn::Abs,
        "sin" => IrUn::Sin,
        "cos" => IrUn::Cos,
        _ => IrUn::Recip,
    }
}

/// A bool tensor that is true where query i may see key j. Shapes: `[tq, tk]`, or
/// `[batch, 1, tq, tk]` for masks that depend on per-row lengths.
fn mask_matrix(ev: &mut Eval, mask: &Mask, tq: &Dim, tk: &Dim, loc: Loc) -> R<ValueId> {
    let shape = vec![tq.clone(), tk.clone()];
    let qi = |ev: &mut Eval| {
        node(
            ev,
            Op::Iota {
                shape: shape.clone(),
                axis: 0,
                dtype: DType::I32,
            },
            &[],
            loc,
        )
    };
    let kj = |ev: &mut Eval| {
        node(
            ev,
            Op::Iota {
                shape: shape.clone(),
                axis: 1,
                dtype: DType::I32,
            },
            &[],
            loc,
        )
    };
    // Queries are aligned with the *last* tq keys (decoding with a cache: tk >= tq).
    let offset = tk.sub(tq);
    let shifted_q = |ev: &mut Eval| -> R<ValueId> {
        let i = qi(ev)?;
        if offset.as_const() == Some(0) {
            return Ok(i);
        }
        let off = match offset.as_const() {
            Some(c) => node(
                ev,
                Op::Constant {
                    value: c as f64,
                    dtype: DType::I32,
                },
                &[],
                loc,
            )?,
            None => node(
                ev,
                Op::DimConst {
                    dim: offset.clone(),
                    dtype: DType::I32,
                },
                &[],
                loc,
            )?,
        };
        let off = ev
            .lower
            .broadcast_to(off, &shape)
            .map_err(|e| ev.ir_err(loc, e))?;
        node(ev, Op::Binary(IrBin::Add), &[i, off], loc)
    };
    match mask {
        Mask::Full => {
            let t = node(
                ev,
                Op::Constant {
                    value: 1.0,
                    dtype: DType::Bool,
                },
                &[],
                loc,
            )?;
            ev.lower
                .broadcast_to(t, &shape)
                .map_err(|e| ev.ir_err(loc, e))
        }
        Mask::Causal => {
            let (i, j) = (shifted_q(ev)?, kj(ev)?);
            node(ev, Op::Compare(CmpOp::Le), &[j, i], loc)
        }
        Mask::Banded(w) => {
            let (i, j) = (shifted_q(ev)?, kj(ev)?);
            let causal = node(ev, Op::Compare(CmpOp::Le), &[j, i], loc)?;
            let wc = node(
                ev,
                Op::Constant {
                    value: *w as f64,
                    dtype: DType::I32,
                },
                &[],
                loc,
            )?;
            let wc = ev
                .lower
                .broadcast_to(wc, &shape)
                .map_err(|e| ev.ir_err(loc, e))?;
            let lo = node(ev, Op::Binary(IrBin::Sub), &[i, wc], loc)?;
            let near = node(ev, Op::Compare(CmpOp::Gt), &[j, lo], loc)?;
            let f = node(
                ev,
                Op::Constant {
                    value: 0.0,
                    dtype: DType::Bool,
                },
                &[],
                loc,
            )?;
            let f = ev
                .lower
                .broadcast_to(f, &shape)
                .map_err(|e| ev.ir_err(loc, e))?;
            node(ev, Op::Select, &[causal, near, f], loc)
        }
        Mask::Prefix(len) | Mask::Padding(len) => {
            // visible(b, i, j) = j < len[b]  (padding) ;  j <= i or j < len[b]  (prefix)
            let batch = ev.lower.ty(*len).shape[0].clone();
            let full = vec![batch.clone(), Dim::c(1), tq.clone(), tk.clone()];
            let j = kj(ev)?;
            let j = ev
                .lower
                .broadcast_to(j, &full)
                .map_err(|e| ev.ir_err(loc, e))?;
            let l = node(
                ev,
                Op::Reshape {
                    shape: vec![batch, Dim::c(1), Dim::c(1), Dim::c(1)],
                },
                &[*len],
                loc,
            )?;
            let l = ev
                .lower
                .broadcast_to(l, &full)
                .map_err(|e| ev.ir_err(loc, e))?;
            let l = if ev.lower.ty(l).dtype != DType::I32 {
                node(ev, Op::Cast { to: DType::I32 }, &[l], loc)?
            } else {
                l
            };
            let inside = node(ev, Op::Compare(CmpOp::Lt), &[j, l], loc)?;
            if matches!(mask, Mask::Padding(_)) {
                return Ok(inside);
            }
            let causal = mask_matrix(ev, &Mask::Causal, tq, tk, loc)?;
            let causal = ev
                .lower
                .broadcast_to(causal, &full)
                .map_err(|e| ev.ir_err(loc, e))?;
            let t = node(
                ev,
                Op::Constant {
                    value: 1.0,
                    dtype: DType::Bool,
                },
                &[],
                loc,
            )?;
            let t = ev
                .lower
                .broadcast_to(t, &full)
                .map_err(|e| ev.ir_err(loc, e))?;
            node(ev, Op::Select, &[causal, t, inside], loc)
        }
        Mask::All(ms) => {
            let mut acc: Option<ValueId> = None;
            for m in ms {
                let v = mask_matrix(ev, m, tq, tk, loc)?;
                acc = Some(match acc {
                    None => v,
                    Some(p) => {
                        let ids = ev.unify(
                            &[(Value::Tensor(p), loc), (Value::Tensor(v), loc)],
                            loc,
                            None,
                        )?;
                        let f = node(
                            ev,
                            Op::Constant {
                                value: 0.0,
                                dtype: DType::Bool,
                            },
                            &[],
                            loc,
                        )?;
                        let shape = ev.lower.ty(ids[0]).shape.clone();
                        let f = ev
                            .lower
                            .broadcast_to(f, &shape)
                            .map_err(|e| ev.ir_err(loc, e))?;
                        node(ev, Op::Select, &[ids[0], ids[1], f], loc)?
                    }
                });
            }
            match acc {
                Some(v) => Ok(v),
                None => mask_matrix(ev, &Mask::Full, tq, tk, loc),
            }
        }
    }
}
