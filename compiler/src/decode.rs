//! Incremental decoding: the one-token step of a causal model with a key/value cache, derived
//! from its full-window logits graph.
//!
//! A decoder-only model over a window of `T` tokens is row-local along the sequence everywhere
//! except inside attention: row `p` of every activation depends only on row `p` of the values
//! it is computed from, and attention mixes rows only through its keys and values. So the step
//! that computes position `p` alone is the full graph with every sequence-indexed value cut to
//! its row `p`, and each self-attention reading a cache of the keys and values of positions
//! `0 ..= p` instead of recomputing them. This pass derives that step mechanically from the
//! bound logits graph (after attention recognition), so every family the spec language
//! expresses gets a cached decoder without writing one:
//!
//! - values that do not depend on the tokens (parameters, position tables, T5's relative bias)
//!   are *static*: copied unchanged, and cut to row `p` with a gather where a sequence-indexed
//!   value meets them (`wpe`, RoPE's sin/cos, a bias row); a broadcast along the sequence axis
//!   is rebuilt one row wide instead;
//! - values computed from the tokens carry their *sequence axis*, tracked through broadcasts,
//!   reshapes, permutes, reductions and matmuls; an op that would mix rows (a reduction or a
//!   slice over the sequence, a matmul contracting it) is refused with the op's name path;
//! - each self-attention gets two persistent state tensors (`kv_cache.N.k`, `kv_cache.N.v`,
//!   the full-window key/value shape, zeros at first): the step writes row `p` of each with the
//!   new key/value (a select against an iota, no dynamic shapes) and attends over all `T` rows
//!   with key padding `p + 1`, so rows past `p` (stale or never written) are never read. A local
//!   (banded) mask becomes an additive bias row (`0` inside the band, `-1e30` outside);
//!   attention over static keys (an encoder's output) needs no cache.
//!
//! The step's inputs are the token input (`tokens`, or an encoder-decoder's `decoder_inputs`)
//! `[1, 1]`, `pos` int `[1]`, and any other input of the model unchanged (an encoder-decoder's
//! `inputs`: the encoder is static, and is recomputed by every step — it is not cached yet);
//! its output is `logits` `[1, 1, V]`. Batch must be 1. Prefix-LM masks and self-attention
//! with key padding are refused: their queries see keys that come later, which no left-to-right
//! cache can provide (cross-attention may pad the encoder's keys).

use std::collections::HashMap;

use crate::ir::ops::{AttnMask, AttnSpec, BinaryOp, CmpOp, Init};
use crate::ir::{DType, Dim, Graph, IrError, Op, Shape, ValueId};

/// Name prefix of the cache state tensors.
pub const CACHE_PREFIX: &str = "kv_cache.";
/// The position input of a decode step.
pub const POS_INPUT: &str = "pos";

/// Why a graph has no incremental form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no key/value-cached decoder: {message}")]
pub struct DecodeError {
    pub message: String,
}

fn err(message: impl Into<String>) -> DecodeError {
    DecodeError {
        message: message.into(),
    }
}

impl From<IrError> for DecodeError {
    fn from(e: IrError) -> Self {
        err(format!("building the step failed: {e}"))
    }
}

/// A decode step and what it needs.
#[derive(Debug, Clone)]
pub struct DecodeStep {
    /// Inputs `tokens` `[1, 1]` and `pos` `[1]`, output `logits` `[1, 1, V]`, the model's
    /// parameters by their names, and the caches as updated state.
    pub graph: Graph,
    /// Positions the cache holds (the full graph's window).
    pub window: usize,
    /// Cache state names, two per self-attention.
    pub caches: Vec<String>,
}

/// Where a value of the full graph went.
#[derive(Clone, Copy, Debug)]
enum Val {
    /// Independent of the tokens: the same value, full size.
    Static(ValueId),
    /// Row `p` of a token-dependent value whose sequence axis is `axis`.
    Row { v: ValueId, axis: usize },
}

fn dims(s: &Shape) -> Result<Vec<usize>, DecodeError> {
    s.iter()
        .map(|d| {
            d.as_const()
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| err(format!("the graph has an unbound dim `{d}`")))
        })
        .collect()
}

fn shape_of(d: &[usize]) -> Shape {
    d.iter().map(|&n| Dim::c(n as i64)).collect()
}

struct Builder<'a> {
    full: &'a Graph,
    g: Graph,
    window: usize,
    pos: ValueId,
    /// Row cuts of static values, by (static value, axis).
    cuts: HashMap<(ValueId, usize), ValueId>,
    caches: Vec<String>,
}

impl Builder<'_> {
    fn where_(&self, v: ValueId) -> String {
        let n = self.full.node(v);
        match n.name() {
            Some(name) => format!("`{}` ({name})", crate::ir::ops::facts(n.op()).name),
            None => format!("`{}` ({v})", crate::ir::ops::facts(n.op()).name),
        }
    }

    fn add(
        &mut self,
        op: Op,
        inputs: &[ValueId],
        name: Option<&str>,
    ) -> Result<ValueId, DecodeError> {
        Ok(self.g.add(op, inputs, name.map(str::to_string))?)
    }

    fn shape(&self, v: ValueId) -> Result<Vec<usize>, DecodeError> {
        dims(self.g.shape(v))
    }

    /// A scalar constant broadcast to `shape`.
    fn filled(
        &mut self,
        value: f64,
        dtype: DType,
        shape: &[usize],
    ) -> Result<ValueId, DecodeError> {
        let c = self.add(Op::Constant { value, dtype }, &[], None)?;
        if shape.is_empty() {
            return Ok(c);
        }
        self.add(
            Op::Broadcast {
                shape: shape_of(shape),
                axes: (0..shape.len()).collect(),
            },
            &[c],
            None,
        )
    }

    /// `pos` broadcast to `shape` (an int tensor), for comparisons against an iota.
    fn pos_like(&mut self, shape: &[usize]) -> Result<ValueId, DecodeError> {
        // `pos` is `[1]`: it stands for axis 0 of a batch-1 tensor; every other axis is new.
        let mut s = shape.to_vec();
        if s.is_empty() {
            return Err(err("internal: position broadcast to a scalar"));
        }
        s[0] = 1;
        let b = self.add(
            Op::Broadcast {
                shape: shape_of(&s),
                axes: (1..s.len()).collect(),
            },
            &[self.pos],
            None,
        )?;
        if shape[0] == 1 {
            Ok(b)
        } else {
            Err(err("batch must be 1 for a cached decoder"))
        }
    }

    /// The key position `j` of every element of a `[b, h, keys, ..]` tensor (an int iota along
    /// axis 2), to compare with `pos`.
    fn key_index(&mut self, shape: &[usize], name: Option<&str>) -> Result<ValueId, DecodeError> {
        self.add(
            Op::Iota {
                shape: shape_of(shape),
                axis: 2,
                dtype: DType::I32,
            },
            &[],
            name,
        )
    }

    /// Row `p` of static `s` along `axis`.
    fn cut(&mut self, s: ValueId, axis: usize) -> Result<ValueId, DecodeError> {
        if let Some(v) = self.cuts.get(&(s, axis)) {
            return Ok(*v);
        }
        let shape = self.shape(s)?;
        if axis >= shape.len() {
            return Err(err("internal: row cut past the rank"));
        }
        let name = self.g.node(s).name().map(str::to_string);
        let out = if shape[axis] == 1 {
            s
        } else if let Op::Broadcast { shape: bs, axes } = self.g.node(s).op().clone() {
            if axes.contains(&axis) {
                // The same value on every row: broadcast one row.
                let mut bs = dims(&bs)?;
                bs[axis] = 1;
                let src = self.g.node(s).inputs()[0];
                self.add(
                    Op::Broadcast {
                        shape: shape_of(&bs),
                        axes,
                    },
                    &[src],
                    name.as_deref(),
                )?
            } else {
                self.gather_row(s, axis, &shape, name.as_deref())?
            }
        } else {
            self.gather_row(s, axis, &shape, name.as_deref())?
        };
        self.cuts.insert((s, axis), out);
        Ok(out)
    }

    fn gather_row(
        &mut self,
        s: ValueId,
        axis: usize,
        shape: &[usize],
        name: Option<&str>,
    ) -> Result<ValueId, DecodeError> {
        if shape[axis] != self.window {
            return Err(err(format!(
                "a value of shape {shape:?} meets the sequence on an axis of {} rows, not the \
                 window's {}",
                shape[axis], self.window
            )));
        }
        let mut perm: Vec<usize> = vec![axis];
        perm.extend((0..shape.len()).filter(|&i| i != axis));
        let front = if axis == 0 {
            s
        } else {
            self.add(Op::Permute { perm: perm.clone() }, &[s], name)?
        };
        let row = self.add(Op::Gather, &[front, self.pos], name)?;
        if axis == 0 {
            return Ok(row);
        }
        let mut inv = vec![0; perm.len()];
        for (i, &p) in perm.iter().enumerate() {
            inv[p] = i;
        }
        self.add(Op::Permute { perm: inv }, &[row], name)
    }

    /// `x` as row-`axis` operand: a row value must be on `axis`, a static one is cut.
    fn as_row(&mut self, x: Val, axis: usize, at: ValueId) -> Result<ValueId, DecodeError> {
        match x {
            Val::Static(s) => self.cut(s, axis),
            Val::Row { v, axis: a } if a == axis => Ok(v),
            Val::Row { .. } => Err(err(format!(
                "{} combines values whose sequence axes differ",
                self.where_(at)
            ))),
        }
    }

    fn refuse(&self, v: ValueId, why: &str) -> DecodeError {
        err(format!("{} {why}", self.where_(v)))
    }

    fn node(
        &mut self,
        v: ValueId,
        vals: &HashMap<ValueId, Val>,
        tokens: ValueId,
    ) -> Result<Val, DecodeError> {
        let n = self.full.node(v);
        let name = n.name().map(str::to_string);
        let name = name.as_deref();
        let ins: Vec<Val> = n.inputs().iter().map(|u| vals[u]).collect();
        let op = n.op().clone();
        if v == tokens {
            let input_name = match n.op() {
                Op::Input { name, .. } => name.clone(),
                _ => return Err(err("internal: the token input is not an input")),
            };
            let t = self.add(
                Op::Input {
                    name: input_name,
                    shape: shape_of(&[1, 1]),
                    dtype: n.dtype(),
                },
                &[],
                name,
            )?;
            return Ok(Val::Row { v: t, axis: 1 });
        }
        // Token-independent: copy.
        if ins.iter().all(|x| matches!(x, Val::Static(_))) {
            let new_ins: Vec<ValueId> = ins
                .iter()
                .map(|x| match x {
                    Val::Static(s) => *s,
                    Val::Row { .. } => unreachable!(),
                })
                .collect();
            let ty = n.ty().clone();
            return Ok(Val::Static(self.g.add_unchecked(
                op,
                &new_ins,
                ty,
                name.map(str::to_string),
            )));
        }
        let row_axis = |x: &Val| match x {
            Val::Row { axis, .. } => Some(*axis),
            Val::Static(_) => None,
        };
        let first_axis = ins.iter().find_map(row_axis).unwrap_or(0);
        let f = crate::ir::ops::facts(&op);
        if f.is_elementwise {
            let mut new_ins = Vec::with_capacity(ins.len());
            for x in &ins {
                new_ins.push(self.as_row(*x, first_axis, v)?);
            }
            let out = self.add(op, &new_ins, name)?;
            return Ok(Val::Row {
                v: out,
                axis: first_axis,
            });
        }
        let a = first_axis;
        let x = match ins[0] {
            Val::Row { v, .. } => v,
            Val::Static(s) => s,
        };
        match op {
            Op::Broadcast { shape, axes } => {
                let out_axis = (0..shape.len())
                    .filter(|i| !axes.contains(i))
                    .nth(a)
                    .ok_or_else(|| self.refuse(v, "has an inconsistent broadcast"))?;
                let mut s = dims(&shape)?;
                s[out_axis] = 1;
                let out = self.add(
                    Op::Broadcast {
                        shape: shape_of(&s),
                        axes,
                    },
                    &[x],
                    name,
                )?;
                Ok(Val::Row {
                    v: out,
                    axis: out_axis,
                })
            }
            Op::Reshape { shape } => {
                let full_in = dims(self.full.shape(n.inputs()[0]))?;
                let out_full = dims(&shape)?;
                let before: usize = full_in[..a].iter().product();
                let rows = full_in[a];
                let mut prefix = 1usize;
                let mut found = None;
                for (k, &d) in out_full.iter().enumerate() {
                    if prefix == before && d == rows {
                        found = Some(k);
                        break;
                    }
                    prefix *= d;
                }
                let k = found.ok_or_else(|| self.refuse(v, "reshapes across the sequence axis"))?;
                let mut s = out_full;
                s[k] = 1;
                let out = self.add(
                    Op::Reshape {
                        shape: shape_of(&s),
                    },
                    &[x],
                    name,
                )?;
                Ok(Val::Row { v: out, axis: k })
            }
            Op::Permute { perm } => {
                let k = perm
                    .iter()
                    .position(|&p| p == a)
                    .ok_or_else(|| self.refuse(v, "has a bad permutation"))?;
                let out = self.add(Op::Permute { perm }, &[x], name)?;
                Ok(Val::Row { v: out, axis: k })
            }
            Op::Slice { axis, .. } | Op::Pad { axis, .. } => {
                if axis == a {
                    return Err(self.refuse(v, "slices or pads along the sequence"));
                }
                let out = self.add(op, &[x], name)?;
                Ok(Val::Row { v: out, axis: a })
            }
            Op::Concat { axis } => {
                if axis == a {
                    return Err(self.refuse(v, "concatenates along the sequence"));
                }
                let mut new_ins = Vec::with_capacity(ins.len());
                for x in &ins {
                    new_ins.push(self.as_row(*x, a, v)?);
                }
                let out = self.add(op, &new_ins, name)?;
                Ok(Val::Row { v: out, axis: a })
            }
            Op::ReduceSum { ref axes, keepdim } | Op::ReduceMax { ref axes, keepdim } => {
                if axes.contains(&a) {
                    return Err(self.refuse(v, "reduces over the sequence"));
                }
                let k = if keepdim {
                    a
                } else {
                    a - axes.iter().filter(|&&i| i < a).count()
                };
                let out = self.add(op.clone(), &[x], name)?;
                Ok(Val::Row { v: out, axis: k })
            }
            Op::MatMul {
                transpose_a,
                transpose_b,
            } => self.matmul(v, &ins, transpose_a, transpose_b, name),
            Op::Gather => match ins[0] {
                Val::Static(t) => {
                    let Val::Row { v: idx, axis } = ins[1] else {
                        unreachable!()
                    };
                    let out = self.add(Op::Gather, &[t, idx], name)?;
                    Ok(Val::Row { v: out, axis })
                }
                Val::Row { .. } => Err(self.refuse(v, "gathers from a token-dependent table")),
            },
            Op::TakeAlong | Op::PutAlong { .. } => {
                let p = self.as_row(ins[0], a, v)?;
                let i = self.as_row(ins[1], a, v)?;
                let out = self.add(op, &[p, i], name)?;
                Ok(Val::Row { v: out, axis: a })
            }
            Op::Attention(spec) => self.attention(v, &ins, spec, name),
            Op::ScatterAdd { .. } => Err(self.refuse(v, "scatters across rows")),
            Op::AttentionBackward { .. } => {
                Err(self.refuse(v, "is a gradient: decode a forward graph"))
            }
            Op::Input { .. }
            | Op::Param { .. }
            | Op::Constant { .. }
            | Op::DimConst { .. }
            | Op::Iota { .. }
            | Op::RandUniform { .. } => Err(err("internal: a source with operands")),
            Op::StopGradient
            | Op::Unary(_)
            | Op::Cast { .. }
            | Op::PowConst { .. }
            | Op::Binary(_)
            | Op::Compare(_)
            | Op::Select => Err(err("internal: elementwise op not handled as elementwise")),
        }
    }

    fn matmul(
        &mut self,
        v: ValueId,
        ins: &[Val],
        ta: bool,
        tb: bool,
        name: Option<&str>,
    ) -> Result<Val, DecodeError> {
        let full_l = dims(self.full.shape(self.full.node(v).inputs()[0]))?;
        let full_r = dims(self.full.shape(self.full.node(v).inputs()[1]))?;
        let rl = full_l.len();
        let rr = full_r.len();
        let (m_axis, k_axis) = if ta {
            (rl - 1, rl - 2)
        } else {
            (rl - 2, rl - 1)
        };
        let (rk_axis, n_axis) = if tb {
            (rr - 1, rr - 2)
        } else {
            (rr - 2, rr - 1)
        };
        let out_rank = rl.max(rr);
        let op = Op::MatMul {
            transpose_a: ta,
            transpose_b: tb,
        };
        match (ins[0], ins[1]) {
            (Val::Row { v: l, axis }, r) => {
                if axis == k_axis {
                    return Err(self.refuse(v, "contracts over the sequence"));
                }
                let batch_axis = axis + 2 < rl && rr == rl;
                let r = match r {
                    Val::Static(s) if batch_axis => self.cut(s, axis)?,
                    Val::Static(s) => s,
                    Val::Row { v: r, axis: ra } if batch_axis && ra == axis => r,
                    Val::Row { .. } => {
                        return Err(self.refuse(v, "multiplies rows by token-dependent columns"))
                    }
                };
                let out = self.add(op, &[l, r], name)?;
                let oaxis = if axis == m_axis { out_rank - 2 } else { axis };
                Ok(Val::Row {
                    v: out,
                    axis: oaxis,
                })
            }
            (Val::Static(l), Val::Row { v: r, axis }) => {
                if axis == rk_axis || (axis != n_axis && rr != rl) {
                    return Err(self.refuse(v, "contracts over the sequence"));
                }
                let l = if axis == n_axis {
                    l
                } else {
                    self.cut(l, axis)?
                };
                let out = self.add(op, &[l, r], name)?;
                let oaxis = if axis == n_axis { out_rank - 1 } else { axis };
                Ok(Val::Row {
                    v: out,
                    axis: oaxis,
                })
            }
            (Val::Static(_), Val::Static(_)) => Err(err("internal: static matmul")),
        }
    }

    fn attention(
        &mut self,
        v: ValueId,
        ins: &[Val],
        spec: AttnSpec,
        name: Option<&str>,
    ) -> Result<Val, DecodeError> {
        let Val::Row { v: q, axis: 2 } = ins[0] else {
            return Err(self.refuse(v, "has queries that are not rows of the sequence"));
        };
        if spec.mask == AttnMask::Prefix {
            return Err(self.refuse(
                v,
                "lets queries see later keys (prefix LM): no left-to-right cache",
            ));
        }
        let (bias_at, _, len_at) = spec.extra_positions();
        let mut bias = bias_at.map(|i| ins[3 + i]);
        let (k, vv, cached) = match (ins[1], ins[2]) {
            (Val::Static(k), Val::Static(vv)) => {
                // Cross-attention over fixed keys (an encoder's output, its padding included):
                // query p sees what every query sees.
                if spec.mask != AttnMask::Full {
                    return Err(self.refuse(v, "masks keys that do not depend on the tokens"));
                }
                let mut operands = vec![q, k, vv];
                if let Some(b) = bias {
                    operands.push(self.as_row(b, 1, v)?);
                }
                if let Some(i) = len_at {
                    match ins[3 + i] {
                        Val::Static(l) => operands.push(l),
                        Val::Row { .. } => {
                            return Err(self.refuse(v, "pads keys by token-dependent lengths"))
                        }
                    }
                }
                let out = self.add(Op::Attention(spec), &operands, name)?;
                return Ok(Val::Row { v: out, axis: 2 });
            }
            (Val::Row { v: k, axis: 2 }, Val::Row { v: vv, axis: 2 }) => {
                if spec.mask == AttnMask::Full || spec.key_padding {
                    return Err(self.refuse(
                        v,
                        "lets queries see later keys (no causal mask, or key padding)",
                    ));
                }
                let layer = self.caches.len() / 2;
                let k = self.cached(k, &format!("{CACHE_PREFIX}{layer}.k"), v)?;
                let vv = self.cached(vv, &format!("{CACHE_PREFIX}{layer}.v"), v)?;
                (k, vv, true)
            }
            _ => return Err(self.refuse(v, "mixes cached and fixed keys/values")),
        };
        let qs = self.shape(q)?;
        let heads = qs[1];
        let mut new_spec = spec;
        let mut extra = Vec::new();
        // The bias row of position p ([h, 1, s]).
        let mut bias_row = match bias.take() {
            Some(b) => Some(self.as_row(b, 1, v)?),
            None => None,
        };
        if let AttnMask::Local { window } = spec.mask {
            // Keys p - window < j <= p: the row p of the band, as a bias.
            let s = self.window;
            let shape = [1usize, 1, s];
            let j = self.key_index(&shape, name)?;
            let p = self.pos_like(&shape)?;
            let w = self.filled(window as f64, DType::I32, &shape)?;
            let pw = self.add(Op::Binary(BinaryOp::Sub), &[p, w], name)?;
            let inside = self.add(Op::Compare(CmpOp::Gt), &[j, pw], name)?;
            let zero = self.filled(0.0, DType::F32, &shape)?;
            let neg = self.filled(-1e30, DType::F32, &shape)?;
            let band = self.add(Op::Select, &[inside, zero, neg], name)?;
            let band = self.reshape(band, &[1, s])?;
            let band = self.add(
                Op::Broadcast {
                    shape: shape_of(&[heads, 1, s]),
                    axes: vec![0],
                },
                &[band],
                name,
            )?;
            bias_row = Some(match bias_row {
                Some(b) => self.add(Op::Binary(BinaryOp::Add), &[b, band], name)?,
                None => band,
            });
            new_spec.mask = AttnMask::Causal;
        }
        if let Some(b) = bias_row {
            new_spec.bias = true;
            extra.push(b);
        }
        if cached {
            // Keys 0 ..= p: the rest of the cache is stale or unwritten.
            let one = self.filled(1.0, DType::I32, &[1])?;
            let len = self.add(Op::Binary(BinaryOp::Add), &[self.pos, one], name)?;
            new_spec.key_padding = true;
            extra.push(len);
        }
        let mut operands = vec![q, k, vv];
        operands.extend(extra);
        let out = self.add(Op::Attention(new_spec), &operands, name)?;
        Ok(Val::Row { v: out, axis: 2 })
    }

    fn reshape(&mut self, x: ValueId, shape: &[usize]) -> Result<ValueId, DecodeError> {
        self.add(
            Op::Reshape {
                shape: shape_of(shape),
            },
            &[x],
            None,
        )
    }

    /// The full-window cache `state` with row `p` replaced by `row` (`[b, h, 1, d]`).
    fn cached(&mut self, row: ValueId, state: &str, at: ValueId) -> Result<ValueId, DecodeError> {
        let rs = self.shape(row)?;
        let mut full = rs.clone();
        full[2] = self.window;
        let dtype = self.g.dtype(row);
        let cache = self.add(
            Op::Param {
                name: state.to_string(),
                shape: shape_of(&full),
                dtype,
                init: Init::Zeros,
                trainable: false,
            },
            &[],
            None,
        )?;
        self.g.set_name(cache, Some(state.to_string()));
        let name = self.full.node(at).name().map(str::to_string);
        let name = name.as_deref();
        let flat = self.reshape(row, &[rs[0], rs[1], rs[3]])?;
        let spread = self.add(
            Op::Broadcast {
                shape: shape_of(&full),
                axes: vec![2],
            },
            &[flat],
            name,
        )?;
        let j = self.key_index(&full, name)?;
        let p = self.pos_like(&full)?;
        let here = self.add(Op::Compare(CmpOp::Eq), &[j, p], name)?;
        let new = self.add(Op::Select, &[here, spread, cache], name)?;
        self.g.add_update(state, new)?;
        self.caches.push(state.to_string());
        Ok(new)
    }
}

/// The input a decode step feeds one token at a time: an encoder-decoder's `decoder_inputs`
/// (its `inputs` stay whole: the encoder is static), otherwise `tokens`.
pub fn token_input(full: &Graph) -> Option<&'static str> {
    ["decoder_inputs", "tokens"]
        .into_iter()
        .find(|n| full.find_input(n).is_some())
}

/// The one-token decode step of `full`, a bound logits graph of batch 1 whose token input
/// ([`token_input`]) is `[1, T]` and whose `logits` output is `[1, T, V]` (see the module doc).
pub fn incremental(full: &Graph) -> Result<DecodeStep, DecodeError> {
    let token_name = token_input(full)
        .ok_or_else(|| err("the model has no `tokens` or `decoder_inputs` input"))?;
    let tokens = full
        .find_input(token_name)
        .ok_or_else(|| err("internal: token input vanished"))?;
    let logits = full
        .output("logits")
        .ok_or_else(|| err("the model has no `logits` output"))?;
    let ts = dims(full.shape(tokens))?;
    if ts.len() != 2 || ts[0] != 1 {
        return Err(err(format!(
            "`{token_name}` must be [1, T] (batch 1), got {ts:?}"
        )));
    }
    let window = ts[1];
    let mut g = Graph::new();
    let pos = g.add(
        Op::Input {
            name: POS_INPUT.to_string(),
            shape: shape_of(&[1]),
            dtype: DType::I32,
        },
        &[],
        Some(POS_INPUT.to_string()),
    )?;
    let mut b = Builder {
        full,
        g,
        window,
        pos,
        cuts: HashMap::new(),
        caches: Vec::new(),
    };
    let order = full
        .topo_order()
        .map_err(|e| err(format!("the graph is not a DAG: {e}")))?;
    let mut vals: HashMap<ValueId, Val> = HashMap::with_capacity(order.len());
    for v in order {
        let val = b.node(v, &vals, tokens)?;
        vals.insert(v, val);
    }
    let out = match vals[&logits] {
        Val::Row { v, axis: 1 } => v,
        Val::Row { axis, .. } => {
            return Err(err(format!(
                "`logits` has its sequence on axis {axis}, not 1"
            )))
        }
        Val::Static(_) => return Err(err("`logits` does not depend on the tokens")),
    };
    b.g.add_output("logits", out)?;
    let caches = b.caches;
    if caches.is_empty() {
        return Err(err("the model has no self-attention to cache"));
    }
    // Values only the full graph needed (static tables never cut, the other outputs) go.
    let mut graph = b.g;
    crate::passes::dce::run(&mut graph)?;
    Ok(DecodeStep {
        graph,
        window,
        caches,
    })
}
