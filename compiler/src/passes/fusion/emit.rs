//! Row-program emission: one program per row group, from the group's nodes (and the nodes it
//! recomputes) in topological order.
//!
//! An operand from outside the group becomes an input loaded with the access its class implies
//! (`Full`, `PerRow`, `PerCol`, `Scalar`). A constant operand is a literal when it is the same
//! everywhere, an expression of the row and column indices when it is built from iotas (masks),
//! and otherwise a load of its compile-time buffer. Every materialised value of the group is an
//! output: per element (`Full`), per row (`PerRow`), a column sum (`ColSum`) or a total (`Sum`);
//! integers and booleans are written as exact `f32` values.

use std::collections::{BTreeSet, HashMap};

use super::analyze::{strides, Cat, Info};
use super::place::{class_by_numel, rule, Class, Plan};
use super::FusionError;
use crate::ir::{BinaryOp, CmpOp, DType, Op, UnaryOp};
use crate::kernel::data::WordType;
use crate::kernel::row as k;
use crate::kernel::{IndexKind, InputAccess, OutputAccess, RowBuilder, RowProgram, ValueId};

/// A row program and what its buffers are.
pub(super) struct GroupCode {
    pub program: RowProgram,
    /// The node whose data each program input reads (through aliases and views).
    pub inputs: Vec<usize>,
    /// The node each program output writes.
    pub outputs: Vec<usize>,
    pub rows: usize,
    pub cols: usize,
}

/// The type of a row value. `IF` is an integer held as an exact `f32` (an integer tensor that
/// another row program wrote: row programs only write `f32`); integer ops on it run in `f32`,
/// which is exact for the small integers (indices, lengths) tensors hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ty {
    F,
    I,
    IF,
    M,
}

type Val = (ValueId, Ty);

struct Emitter<'a, 'g> {
    info: &'a Info<'g>,
    plan: &'a Plan,
    word: &'a dyn Fn(usize) -> WordType,
    b: RowBuilder,
    rows: usize,
    cols: usize,
    val: HashMap<usize, Val>,
    /// Per reduction node: the per-row partial (`Total`) or the per-element value (`ColTotal`).
    pending: HashMap<usize, ValueId>,
    loads: HashMap<(usize, u8), Val>,
    inputs: Vec<usize>,
    konst: HashMap<(usize, Vec<ValueId>), Val>,
    index: HashMap<u8, ValueId>,
    consts_i: HashMap<i32, ValueId>,
    consts_f: HashMap<u32, ValueId>,
    /// The value of each f32 constant emitted.
    const_of: HashMap<ValueId, f32>,
    coords_memo: HashMap<(Vec<usize>, u8), Vec<ValueId>>,
    group: usize,
}

fn err(info: &Info, i: usize, detail: impl Into<String>) -> FusionError {
    FusionError::Unsupported {
        value: info.name(i),
        op: info.op(i).name().to_string(),
        detail: detail.into(),
    }
}

fn access_of(c: Class) -> InputAccess {
    match c {
        Class::Elem => InputAccess::Full,
        Class::Row => InputAccess::PerRow,
        Class::Col => InputAccess::PerCol,
        Class::Scalar | Class::Total | Class::ColTotal => InputAccess::Scalar,
    }
}

/// Emits the row program of group `g`; `None` when the group writes nothing.
pub(super) fn emit_group(
    info: &Info,
    plan: &Plan,
    g: usize,
    word: &dyn Fn(usize) -> WordType,
) -> Result<Option<GroupCode>, FusionError> {
    let (rows, cols) = plan.space(g).expect("a group step");
    let n = info.order.len();
    let mut members: BTreeSet<usize> = plan.steps[g].nodes.iter().copied().collect();
    for i in 0..n {
        if plan.home[i] == Some(g) && info.cat[i] == Cat::Alias {
            members.insert(i);
        }
    }
    members.extend(plan.recompute[g].iter().copied());
    let outputs: Vec<usize> = plan.steps[g]
        .nodes
        .iter()
        .copied()
        .filter(|i| plan.mat[*i] && info.cat[*i] == Cat::Row)
        .collect();
    if outputs.is_empty() {
        return Ok(None);
    }
    // Live members: those the outputs need.
    let mut live: BTreeSet<usize> = BTreeSet::new();
    let mut stack = outputs.clone();
    while let Some(i) = stack.pop() {
        if members.contains(&i) && live.insert(i) {
            stack.extend(info.ins[i].iter().copied());
        }
    }
    let name = info.origin(outputs[0]);
    let mut e = Emitter {
        info,
        plan,
        word,
        b: RowBuilder::new(name),
        rows,
        cols,
        val: HashMap::new(),
        pending: HashMap::new(),
        loads: HashMap::new(),
        inputs: Vec::new(),
        konst: HashMap::new(),
        index: HashMap::new(),
        consts_i: HashMap::new(),
        consts_f: HashMap::new(),
        const_of: HashMap::new(),
        coords_memo: HashMap::new(),
        group: g,
    };
    for i in live {
        e.node(i)?;
    }
    for o in &outputs {
        e.output(*o)?;
    }
    let program = e.b.finish().map_err(|x| FusionError::Internal {
        value: info.name(outputs[0]),
        detail: x.to_string(),
    })?;
    Ok(Some(GroupCode {
        program,
        inputs: e.inputs,
        outputs,
        rows,
        cols,
    }))
}

impl Emitter<'_, '_> {
    fn ci(&mut self, c: i32) -> ValueId {
        if let Some(v) = self.consts_i.get(&c) {
            return *v;
        }
        let v = self.b.i32(c);
        self.consts_i.insert(c, v);
        v
    }
    fn cf(&mut self, c: f32) -> ValueId {
        if let Some(v) = self.consts_f.get(&c.to_bits()) {
            return *v;
        }
        let v = self.b.f32(c);
        self.consts_f.insert(c.to_bits(), v);
        self.const_of.insert(v, c);
        v
    }
    fn idx(&mut self, kind: IndexKind) -> ValueId {
        let key = kind as u8;
        if let Some(v) = self.index.get(&key) {
            return *v;
        }
        let v = self.b.index(kind);
        self.index.insert(key, v);
        v
    }
    fn mask_const(&mut self, v: bool) -> ValueId {
        let z = self.ci(0);
        self.b
            .cmp(if v { k::CmpOp::Eq } else { k::CmpOp::Ne }, z, z)
    }

    /// The class a member node has in this group (recomputed nodes: derived from the space).
    fn class_of(&self, i: usize) -> Option<Class> {
        if self.plan.home[i] == Some(self.group) {
            self.plan.class[i]
        } else {
            class_by_numel(self.info.numel(i), self.rows, self.cols)
        }
    }

    fn opclasses(&self, i: usize) -> Result<Vec<Class>, FusionError> {
        if self.plan.home[i] == Some(self.group) {
            return Ok(self.plan.opclass[i].clone());
        }
        rule(self.info, i, self.rows, self.cols)
            .map(|r| r.1)
            .ok_or_else(|| FusionError::Internal {
                value: self.info.name(i),
                detail: "recomputed node does not fit the group".into(),
            })
    }

    /// Loads the data of node `u` with the access of class `c`, typed as `u`'s IR dtype.
    fn load(&mut self, u: usize, c: Class) -> Result<Val, FusionError> {
        let access = access_of(c);
        let key = (u, access as u8);
        if let Some(v) = self.loads.get(&key) {
            return Ok(*v);
        }
        let w = (self.word)(u);
        let dt = match w {
            WordType::F32 => k::DType::F32,
            WordType::I32 => k::DType::I32,
        };
        let id = self.b.input(self.info.origin(u), dt, access);
        self.inputs.push(u);
        let raw = self.b.load(id);
        let v = match (self.info.dtype(u), w) {
            (DType::Bool, WordType::I32) => {
                let z = self.ci(0);
                (self.b.cmp(k::CmpOp::Ne, raw, z), Ty::M)
            }
            (DType::Bool, WordType::F32) => {
                let z = self.cf(0.0);
                (self.b.cmp(k::CmpOp::Ne, raw, z), Ty::M)
            }
            (d, WordType::I32) if d.is_int() => (raw, Ty::I),
            (d, WordType::F32) if d.is_int() => (raw, Ty::IF),
            (_, WordType::I32) => (self.b.i32_to_f32(raw), Ty::F),
            (_, WordType::F32) => (raw, Ty::F),
        };
        self.loads.insert(key, v);
        Ok(v)
    }

    /// Operand `u` read with class `c`.
    fn get(&mut self, u: usize, c: Class) -> Result<Val, FusionError> {
        if let Some(v) = self.val.get(&u) {
            return Ok(*v);
        }
        let info = self.info;
        if info.konst[u] {
            if let Some(x) = self.plan.uniform[u] {
                return Ok(self.literal(info.dtype(u), x));
            }
            if self.plan.inline_ok[u] && !self.plan.const_mat[u] {
                let coords = self.coords(&info.shape[u].clone(), c);
                return self.konst_expr(u, &coords);
            }
        }
        self.load(u, c)
    }

    fn literal(&mut self, dt: DType, x: f64) -> Val {
        match dt {
            DType::Bool => (self.mask_const(x != 0.0), Ty::M),
            d if d.is_int() => (self.ci(x as i32), Ty::I),
            _ => (self.cf(x as f32), Ty::F),
        }
    }

    /// Coordinates of an element of a tensor of `shape` read with class `c`, from the row and
    /// column indices (row-level arithmetic is once per row; per-column arithmetic only where the
    /// shape does not split at the row/column boundary).
    fn coords(&mut self, shape: &[usize], c: Class) -> Vec<ValueId> {
        let key = (shape.to_vec(), c as u8);
        if let Some(v) = self.coords_memo.get(&key) {
            return v.clone();
        }
        let v = self.coords_uncached(shape, c);
        self.coords_memo.insert(key, v.clone());
        v
    }

    fn coords_uncached(&mut self, shape: &[usize], c: Class) -> Vec<ValueId> {
        let rank = shape.len();
        let split = |s: &[usize], part: usize| -> Option<usize> {
            (0..=s.len()).find(|k| s[*k..].iter().product::<usize>() == part)
        };
        let mut out = vec![ValueId(0); rank];
        let decompose =
            |e: &mut Self, flat: ValueId, axes: std::ops::Range<usize>, out: &mut Vec<ValueId>| {
                let sub = &shape[axes.clone()];
                let st = strides(sub);
                for (j, a) in axes.clone().enumerate() {
                    let mut v = flat;
                    if st[j] != 1 {
                        let d = e.ci(st[j] as i32);
                        v = e.b.binary(k::BinaryOp::Div, v, d);
                    }
                    if j != 0 {
                        let m = e.ci(sub[j] as i32);
                        v = e.b.binary(k::BinaryOp::Rem, v, m);
                    }
                    out[a] = v;
                }
            };
        match c {
            Class::Scalar | Class::Total | Class::ColTotal => {
                let z = self.ci(0);
                out.iter_mut().for_each(|o| *o = z);
            }
            Class::Row => {
                let r = self.idx(IndexKind::Row);
                decompose(self, r, 0..rank, &mut out);
            }
            Class::Col => {
                let col = self.idx(IndexKind::Col);
                decompose(self, col, 0..rank, &mut out);
            }
            Class::Elem => match split(shape, self.cols) {
                Some(kk) => {
                    let r = self.idx(IndexKind::Row);
                    let col = self.idx(IndexKind::Col);
                    decompose(self, r, 0..kk, &mut out);
                    decompose(self, col, kk..rank, &mut out);
                }
                None => {
                    let r = self.idx(IndexKind::Row);
                    let col = self.idx(IndexKind::Col);
                    let cc = self.ci(self.cols as i32);
                    let rc = self.b.mul(r, cc);
                    let flat = self.b.add(rc, col);
                    decompose(self, flat, 0..rank, &mut out);
                }
            },
        }
        out
    }

    /// A constant built from iotas, at the given coordinates.
    fn konst_expr(&mut self, u: usize, coords: &[ValueId]) -> Result<Val, FusionError> {
        let key = (u, coords.to_vec());
        if let Some(v) = self.konst.get(&key) {
            return Ok(*v);
        }
        let info = self.info;
        let v = if let Some(x) = self.plan.uniform[u] {
            self.literal(info.dtype(u), x)
        } else {
            let ins = info.ins[u].clone();
            match info.op(u) {
                Op::Iota { axis, dtype, .. } => {
                    let c = coords[*axis];
                    if dtype.is_float() {
                        (self.b.i32_to_f32(c), Ty::F)
                    } else {
                        (c, Ty::I)
                    }
                }
                Op::Broadcast { axes, .. } => {
                    let inner: Vec<ValueId> = coords
                        .iter()
                        .enumerate()
                        .filter(|(a, _)| !axes.contains(a))
                        .map(|(_, c)| *c)
                        .collect();
                    self.konst_expr(ins[0], &inner)?
                }
                Op::Reshape { .. } | Op::StopGradient => {
                    let inner = self.reshape_coords(&info.shape[u], &info.shape[ins[0]], coords);
                    self.konst_expr(ins[0], &inner)?
                }
                Op::Permute { perm } => {
                    let mut inner = vec![ValueId(0); perm.len()];
                    for (o, p) in perm.iter().enumerate() {
                        inner[*p] = coords[o];
                    }
                    self.konst_expr(ins[0], &inner)?
                }
                Op::Slice {
                    axis, start, step, ..
                } => {
                    let mut inner = coords.to_vec();
                    let s = self.ci(*step as i32);
                    let st = self.ci(start.as_const().unwrap_or(0) as i32);
                    let m = self.b.mul(coords[*axis], s);
                    inner[*axis] = self.b.add(m, st);
                    self.konst_expr(ins[0], &inner)?
                }
                op => {
                    let mut args = Vec::with_capacity(ins.len());
                    for x in &ins {
                        args.push(self.konst_expr(*x, coords)?);
                    }
                    let op = op.clone();
                    self.elementwise(u, &op, &args)?
                }
            }
        };
        self.konst.insert(key, v);
        Ok(v)
    }

    /// Coordinates of the operand of a reshape from the output's.
    fn reshape_coords(&mut self, out: &[usize], inp: &[usize], coords: &[ValueId]) -> Vec<ValueId> {
        let non1 = |s: &[usize]| -> Vec<usize> { s.iter().copied().filter(|d| *d != 1).collect() };
        if non1(out) == non1(inp) {
            let z = self.ci(0);
            let picked: Vec<ValueId> = out
                .iter()
                .zip(coords)
                .filter(|(d, _)| **d != 1)
                .map(|(_, c)| *c)
                .collect();
            let mut it = picked.into_iter();
            return inp
                .iter()
                .map(|d| if *d == 1 { z } else { it.next().unwrap_or(z) })
                .collect();
        }
        // General: through the flat index.
        let st = strides(out);
        let mut flat = self.ci(0);
        for (c, s) in coords.iter().zip(&st) {
            let sv = self.ci(*s as i32);
            let t = self.b.mul(*c, sv);
            flat = self.b.add(flat, t);
        }
        let ist = strides(inp);
        inp.iter()
            .enumerate()
            .map(|(a, d)| {
                let sv = self.ci(ist[a] as i32);
                let q = self.b.binary(k::BinaryOp::Div, flat, sv);
                let dv = self.ci(*d as i32);
                self.b.binary(k::BinaryOp::Rem, q, dv)
            })
            .collect()
    }

    /// One elementwise IR op on row values.
    fn elementwise(&mut self, i: usize, op: &Op, a: &[Val]) -> Result<Val, FusionError> {
        let info = self.info;
        let out_dt = info.dtype(i);
        Ok(match op {
            Op::Unary(u) => {
                let (x, t) = a[0];
                let ku = match u {
                    UnaryOp::Neg => k::UnaryOp::Neg,
                    UnaryOp::Abs => k::UnaryOp::Abs,
                    UnaryOp::Exp => k::UnaryOp::Exp,
                    UnaryOp::Log => k::UnaryOp::Log,
                    UnaryOp::Sqrt => k::UnaryOp::Sqrt,
                    UnaryOp::Recip => k::UnaryOp::Recip,
                    UnaryOp::Tanh => k::UnaryOp::Tanh,
                    UnaryOp::Erf => k::UnaryOp::Erf,
                    UnaryOp::Sin | UnaryOp::Cos => {
                        return Err(err(info, i, "row programs have no sine or cosine"))
                    }
                };
                if matches!(t, Ty::I | Ty::IF) && !matches!(ku, k::UnaryOp::Neg | k::UnaryOp::Abs) {
                    return Err(err(info, i, "integer operand"));
                }
                (self.b.unary(ku, x), t)
            }
            Op::Cast { to } => {
                let (x, t) = a[0];
                match (t, to) {
                    (Ty::F | Ty::IF, d) if d.is_float() => (x, Ty::F),
                    (Ty::IF, d) if d.is_int() => (x, Ty::IF),
                    (Ty::I, d) if d.is_float() => (self.b.i32_to_f32(x), Ty::F),
                    (Ty::I, d) if d.is_int() => (x, Ty::I),
                    (Ty::M, d) if d.is_float() => {
                        let (one, zero) = (self.cf(1.0), self.cf(0.0));
                        (self.b.select(x, one, zero), Ty::F)
                    }
                    (Ty::M, d) if d.is_int() => {
                        let (one, zero) = (self.ci(1), self.ci(0));
                        (self.b.select(x, one, zero), Ty::I)
                    }
                    (Ty::M, _) => (x, Ty::M),
                    (Ty::F | Ty::IF, DType::Bool) => {
                        let z = self.cf(0.0);
                        (self.b.cmp(k::CmpOp::Ne, x, z), Ty::M)
                    }
                    (Ty::I, _) => {
                        let z = self.ci(0);
                        (self.b.cmp(k::CmpOp::Ne, x, z), Ty::M)
                    }
                    (Ty::IF, _) => (x, Ty::IF),
                    (Ty::F, _) => {
                        return Err(err(
                            info,
                            i,
                            "float to integer casts are not supported in row programs",
                        ))
                    }
                }
            }
            Op::PowConst { p } => {
                let (x, _) = a[0];
                (self.pow(x, *p), Ty::F)
            }
            Op::Binary(bop) => {
                let ((x, y), t) = self.unify2(a[0], a[1]);
                if t == Ty::IF && *bop == BinaryOp::Div {
                    return Err(err(
                        info,
                        i,
                        "integer division of integers another row program wrote",
                    ));
                }
                let kb = match bop {
                    BinaryOp::Add => k::BinaryOp::Add,
                    BinaryOp::Sub => k::BinaryOp::Sub,
                    BinaryOp::Mul => k::BinaryOp::Mul,
                    BinaryOp::Div => k::BinaryOp::Div,
                    BinaryOp::Max => k::BinaryOp::Max,
                    BinaryOp::Min => k::BinaryOp::Min,
                };
                if t == Ty::M {
                    return Err(err(info, i, "arithmetic on booleans"));
                }
                if kb == k::BinaryOp::Div && t == Ty::F {
                    return Ok((self.divide(x, y), Ty::F));
                }
                (self.b.binary(kb, x, y), t)
            }
            Op::Compare(c) => {
                let ((x, y), t) = self.unify2(a[0], a[1]);
                let kc = match c {
                    CmpOp::Lt => k::CmpOp::Lt,
                    CmpOp::Le => k::CmpOp::Le,
                    CmpOp::Gt => k::CmpOp::Gt,
                    CmpOp::Ge => k::CmpOp::Ge,
                    CmpOp::Eq => k::CmpOp::Eq,
                    CmpOp::Ne => k::CmpOp::Ne,
                };
                if t == Ty::M {
                    // Booleans: equality only, as (a and b) or (not a and not b).
                    let both = self.b.binary(k::BinaryOp::And, x, y);
                    let nx = self.b.unary(k::UnaryOp::Not, x);
                    let ny = self.b.unary(k::UnaryOp::Not, y);
                    let neither = self.b.binary(k::BinaryOp::And, nx, ny);
                    let eq = self.b.binary(k::BinaryOp::Or, both, neither);
                    match c {
                        CmpOp::Eq => (eq, Ty::M),
                        CmpOp::Ne => (self.b.unary(k::UnaryOp::Not, eq), Ty::M),
                        _ => return Err(err(info, i, "ordering comparison of booleans")),
                    }
                } else {
                    (self.b.cmp(kc, x, y), Ty::M)
                }
            }
            Op::Select => {
                let (c, _) = a[0];
                let ((x, y), t) = self.unify2(a[1], a[2]);
                if t == Ty::M {
                    let l = self.b.binary(k::BinaryOp::And, c, x);
                    let nc = self.b.unary(k::UnaryOp::Not, c);
                    let r = self.b.binary(k::BinaryOp::And, nc, y);
                    (self.b.binary(k::BinaryOp::Or, l, r), Ty::M)
                } else {
                    (self.b.select(c, x, y), t)
                }
            }
            Op::Constant { value, .. } => self.literal(out_dt, *value),
            other => {
                return Err(err(
                    info,
                    i,
                    format!("`{}` is not elementwise", other.name()),
                ))
            }
        })
    }

    /// `x / y`, as a multiplication where that saves per-element divisions: by the rounded
    /// reciprocal of a constant, or by a reciprocal computed once per row when `y` is the same
    /// along the row and `x` is not (softmax and mean denominators). Either differs from a
    /// correctly rounded quotient by at most about one ulp.
    fn divide(&mut self, x: ValueId, y: ValueId) -> ValueId {
        if let Some(c) = self.const_of.get(&y).copied() {
            let r = (1.0 / f64::from(c)) as f32;
            if r.is_finite() && r != 0.0 {
                let rv = self.cf(r);
                return self.b.mul(x, rv);
            }
        }
        if let Ok(t) = crate::kernel::validate(self.b.program()) {
            let (lx, ly) = (t.level[x.index()], t.level[y.index()]);
            if ly < crate::kernel::Level::Elem && lx == crate::kernel::Level::Elem {
                let r = self.b.recip(y);
                return self.b.mul(x, r);
            }
        }
        self.b.div(x, y)
    }

    /// Two operands of one IR type: an `i32` meets an integer held as `f32` in `f32`.
    fn unify2(&mut self, a: Val, b: Val) -> ((ValueId, ValueId), Ty) {
        match (a.1, b.1) {
            (Ty::IF, Ty::I) => ((a.0, self.b.i32_to_f32(b.0)), Ty::IF),
            (Ty::I, Ty::IF) => ((self.b.i32_to_f32(a.0), b.0), Ty::IF),
            (t, _) => ((a.0, b.0), t),
        }
    }

    fn pow(&mut self, x: ValueId, p: f64) -> ValueId {
        let int = p.fract() == 0.0 && p.abs() <= 8.0;
        if p == 0.5 {
            return self.b.sqrt(x);
        }
        if p == -0.5 {
            return self.b.rsqrt(x);
        }
        if int {
            let n = p.abs() as u32;
            if n == 0 {
                return self.cf(1.0);
            }
            let mut acc = x;
            for _ in 1..n {
                acc = self.b.mul(acc, x);
            }
            return if p < 0.0 { self.b.recip(acc) } else { acc };
        }
        // x^p = exp(p ln x) for x > 0 (the IR's domain for non-integer p).
        let l = self.b.log(x);
        let pc = self.cf(p as f32);
        let t = self.b.mul(l, pc);
        self.b.exp(t)
    }

    fn node(&mut self, i: usize) -> Result<(), FusionError> {
        let info = self.info;
        if info.cat[i] == Cat::Alias {
            let c = self.class_of(i).unwrap_or(Class::Elem);
            let v = self.get(info.ins[i][0], c)?;
            self.val.insert(i, v);
            return Ok(());
        }
        let cls = self.class_of(i).ok_or_else(|| FusionError::Internal {
            value: info.name(i),
            detail: "member without a class".into(),
        })?;
        let oc = self.opclasses(i)?;
        let ins = info.ins[i].clone();
        let mut args = Vec::with_capacity(ins.len());
        for (u, c) in ins.iter().zip(&oc) {
            args.push(self.get(*u, *c)?);
        }
        let op = info.op(i).clone();
        let v = match &op {
            Op::Broadcast { .. } => args[0],
            Op::ReduceSum { .. } | Op::ReduceMax { .. } => {
                let (x, t) = args[0];
                if t != Ty::F {
                    return Err(err(
                        info,
                        i,
                        "reductions of integers are not supported in row programs",
                    ));
                }
                let sum = matches!(op, Op::ReduceSum { .. });
                match cls {
                    Class::Row => (
                        if sum {
                            self.b.row_sum(x)
                        } else {
                            self.b.row_max(x)
                        },
                        Ty::F,
                    ),
                    Class::Total => {
                        let part = if oc[0] == Class::Elem {
                            self.b.row_sum(x)
                        } else {
                            x
                        };
                        self.pending.insert(i, part);
                        return Ok(());
                    }
                    Class::ColTotal => {
                        self.pending.insert(i, x);
                        return Ok(());
                    }
                    _ => return Err(err(info, i, "unexpected reduction class")),
                }
            }
            Op::TakeAlong => {
                let ((x, t), (ix, it)) = (args[0], args[1]);
                if t != Ty::F {
                    return Err(err(info, i, "take_along of integers"));
                }
                let hit = self.col_hit(ix, it);
                let z = self.cf(0.0);
                let picked = self.b.select(hit, x, z);
                (self.b.row_sum(picked), Ty::F)
            }
            Op::PutAlong { .. } => {
                let ((x, t), (ix, it)) = (args[0], args[1]);
                let hit = self.col_hit(ix, it);
                let z = if t == Ty::I { self.ci(0) } else { self.cf(0.0) };
                (self.b.select(hit, x, z), t)
            }
            _ => self.elementwise(i, &op, &args)?,
        };
        self.val.insert(i, v);
        Ok(())
    }

    /// `col == idx` for an index held as i32 or as an exact f32.
    fn col_hit(&mut self, ix: ValueId, t: Ty) -> ValueId {
        let col = self.idx(IndexKind::Col);
        if matches!(t, Ty::F | Ty::IF) {
            let cf = self.b.i32_to_f32(col);
            self.b.cmp(k::CmpOp::Eq, cf, ix)
        } else {
            self.b.cmp(k::CmpOp::Eq, col, ix)
        }
    }

    fn output(&mut self, o: usize) -> Result<(), FusionError> {
        let info = self.info;
        let name = info.origin(o);
        let cls = self.plan.class[o].unwrap_or(Class::Elem);
        let (access, v) = match cls {
            Class::Total => (OutputAccess::Sum, (self.pending[&o], Ty::F)),
            Class::ColTotal => (OutputAccess::ColSum, (self.pending[&o], Ty::F)),
            Class::Elem => (OutputAccess::Full, self.val[&o]),
            Class::Row | Class::Scalar => (OutputAccess::PerRow, self.val[&o]),
            Class::Col => return Err(err(info, o, "a per-column value cannot be computed")),
        };
        let v = match v.1 {
            Ty::F | Ty::IF => v.0,
            Ty::I => self.b.i32_to_f32(v.0),
            Ty::M => {
                let (one, zero) = (self.cf(1.0), self.cf(0.0));
                self.b.select(v.0, one, zero)
            }
        };
        if cls == Class::Scalar && self.rows != 1 {
            return Err(FusionError::Internal {
                value: info.name(o),
                detail: "a scalar materialised from a multi-row group".into(),
            });
        }
        self.b.output(name, access, v);
        Ok(())
    }
}
