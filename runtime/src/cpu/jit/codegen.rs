//! Row program → Cranelift IR: one native function per kernel that processes a range of rows.
//!
//! Shape of the generated function `f(args, row_begin, row_end, cols, rows, index_base)`:
//! kernel-level values are computed once in the entry block; then, per row, the schedule's
//! segments run in order: row-level values, then a column pass. A column pass is an `f32x4` loop
//! unrolled `unroll` times (one accumulator per unrolled step, so reductions are not one long
//! dependency chain), a one-vector loop for the remaining whole vectors, and a tail for the last
//! `cols % 4` columns that copies them into 16-byte stack slots, runs the same vector code on the
//! slots and copies the results back, with reduction lanes past the end masked out. Every value,
//! even a row- or kernel-level one, is an `f32x4`/`i32x4` (uniform values are splats), so there is
//! one code path per instruction and no scalar tail code to keep in sync.
//!
//! `args` holds one pointer per input, then one per output; `ColSum` and `Sum` outputs point at a
//! zeroed per-task scratch buffer (`[cols]` / `[1]`) that the generated code accumulates into.
//! Rows are global indices; `index_base` is added to the flat element index of `rand_uniform`
//! (the runtime uses it when it splits a flat map into chunks).

use cranelift_codegen::ir::{
    condcodes::{FloatCC, IntCC},
    types, AbiParam, Block, BlockArg, InstBuilder, MemFlagsData, StackSlot, StackSlotData,
    StackSlotKind, Type, Value,
};
use cranelift_frontend::{FunctionBuilder, Variable};
use kiln_compiler::kernel::schedule::ColumnPass;
use kiln_compiler::kernel::{
    BinaryOp, CmpOp, DType, IndexKind, InputAccess, Inst, Level, OutputAccess, ReduceOp,
    RowProgram, Schedule, UnaryOp, ValueId, ValueType,
};

use super::math::{self, fk, ik, ik4, Target};

/// The generated function's Rust type.
pub(crate) type RawKernelFn = unsafe extern "C" fn(*const *mut u8, i64, i64, i64, i64, i64);

/// The signature of [`RawKernelFn`] for the given calling convention.
pub(crate) fn signature(
    call_conv: cranelift_codegen::isa::CallConv,
) -> cranelift_codegen::ir::Signature {
    let mut sig = cranelift_codegen::ir::Signature::new(call_conv);
    for _ in 0..6 {
        sig.params.push(AbiParam::new(types::I64));
    }
    sig
}

fn data() -> MemFlagsData {
    MemFlagsData::new().with_notrap()
}

fn vec_type(t: ValueType) -> Type {
    match t {
        ValueType::F32 => types::F32X4,
        ValueType::I32 | ValueType::Mask => types::I32X4,
    }
}

fn lane_type(d: DType) -> Type {
    match d {
        DType::F32 => types::F32,
        DType::I32 => types::I32,
    }
}

fn float_cc(op: CmpOp) -> FloatCC {
    match op {
        CmpOp::Eq => FloatCC::Equal,
        CmpOp::Ne => FloatCC::NotEqual,
        CmpOp::Lt => FloatCC::LessThan,
        CmpOp::Le => FloatCC::LessThanOrEqual,
        CmpOp::Gt => FloatCC::GreaterThan,
        CmpOp::Ge => FloatCC::GreaterThanOrEqual,
    }
}

fn int_cc(op: CmpOp) -> IntCC {
    match op {
        CmpOp::Eq => IntCC::Equal,
        CmpOp::Ne => IntCC::NotEqual,
        CmpOp::Lt => IntCC::SignedLessThan,
        CmpOp::Le => IntCC::SignedLessThanOrEqual,
        CmpOp::Gt => IntCC::SignedGreaterThan,
        CmpOp::Ge => IntCC::SignedGreaterThanOrEqual,
    }
}

/// Where a column step reads and writes.
#[derive(Clone, Copy)]
enum Mem {
    /// Directly in the buffers, at column `c + 4k` (byte offset `16k` as an immediate).
    Direct { k: u32 },
    /// In the tail's stack slots; `valid` masks the lanes that are real columns.
    Tail { valid: Value },
}

/// Per-row state of the generated code.
struct RowState {
    r: Value,
    /// Byte address of row `r` in each `Full` buffer (inputs, then outputs).
    row_base: Vec<Option<Value>>,
    /// `r * cols + index_base` as a splat `i32x4` (for `rand_uniform`).
    row_flat: Option<Value>,
}

struct Gen<'p> {
    prog: &'p RowProgram,
    sched: &'p Schedule,
    target: Target,
    unroll: u32,
    /// Base pointer of every buffer: inputs, then outputs.
    ptr: Vec<Value>,
    cols: Value,
    rows: Value,
    index_base: Value,
    /// Vector value of every kernel- and row-level value once computed.
    uni: Vec<Option<Value>>,
    /// Key of each `rand_uniform` instruction, once computed.
    rand_key: Vec<Option<Value>>,
    /// 16-byte stack slot per buffer, for tails.
    slot: Vec<Option<StackSlot>>,
}

impl<'p> Gen<'p> {
    fn ty(&self, v: ValueId) -> ValueType {
        self.sched.typing.ty[v.index()]
    }
    fn level(&self, v: ValueId) -> Level {
        self.sched.typing.level[v.index()]
    }
    fn n_inputs(&self) -> usize {
        self.prog.inputs.len()
    }
    fn uses_rand(&self) -> bool {
        self.prog
            .body
            .iter()
            .enumerate()
            .any(|(i, inst)| self.sched.live[i] && matches!(inst, Inst::RandUniform { .. }))
    }

    /// The operations whose result does not depend on where they run.
    fn pure_op(&self, b: &mut FunctionBuilder<'_>, inst: &Inst, ops: &[Value]) -> Value {
        let t = self.target;
        match *inst {
            Inst::ConstF32(c) => fk(b, c),
            Inst::ConstI32(c) => ik(b, c),
            Inst::Unary(op, a) => {
                let x = ops[0];
                let float = self.ty(a) == ValueType::F32;
                match op {
                    UnaryOp::Neg if float => b.ins().fneg(x),
                    UnaryOp::Neg => b.ins().ineg(x),
                    UnaryOp::Abs if float => b.ins().fabs(x),
                    UnaryOp::Abs => b.ins().iabs(x),
                    UnaryOp::Not => b.ins().bnot(x),
                    UnaryOp::Exp => math::exp(b, t, x),
                    UnaryOp::Log => math::log(b, t, x),
                    UnaryOp::Sqrt => b.ins().sqrt(x),
                    UnaryOp::Rsqrt => math::rsqrt(b, x),
                    UnaryOp::Recip => math::recip(b, x),
                    UnaryOp::Tanh => math::tanh(b, t, x),
                    UnaryOp::Erf => math::erf(b, t, x),
                    UnaryOp::Sigmoid => math::sigmoid(b, t, x),
                }
            }
            Inst::Binary(op, a, _) => {
                let (x, y) = (ops[0], ops[1]);
                match self.ty(a) {
                    ValueType::F32 => match op {
                        BinaryOp::Add => b.ins().fadd(x, y),
                        BinaryOp::Sub => b.ins().fsub(x, y),
                        BinaryOp::Mul => b.ins().fmul(x, y),
                        BinaryOp::Div => b.ins().fdiv(x, y),
                        BinaryOp::Max => math::fmax(b, x, y),
                        BinaryOp::Min => math::fmin(b, x, y),
                        BinaryOp::Rem | BinaryOp::And | BinaryOp::Or => {
                            unreachable!("validated: {op:?} is not an f32 operation")
                        }
                    },
                    ValueType::I32 => match op {
                        BinaryOp::Add => b.ins().iadd(x, y),
                        BinaryOp::Sub => b.ins().isub(x, y),
                        BinaryOp::Mul => b.ins().imul(x, y),
                        BinaryOp::Div | BinaryOp::Rem => int_div_rem(b, op, x, y),
                        BinaryOp::Max => b.ins().smax(x, y),
                        BinaryOp::Min => b.ins().smin(x, y),
                        BinaryOp::And | BinaryOp::Or => {
                            unreachable!("validated: {op:?} is not an i32 operation")
                        }
                    },
                    ValueType::Mask => match op {
                        BinaryOp::And => b.ins().band(x, y),
                        _ => b.ins().bor(x, y),
                    },
                }
            }
            Inst::Fma(..) => math::fmadd(b, t, ops[0], ops[1], ops[2]),
            Inst::Cmp(op, a, _) => match self.ty(a) {
                ValueType::F32 => b.ins().fcmp(float_cc(op), ops[0], ops[1]),
                _ => b.ins().icmp(int_cc(op), ops[0], ops[1]),
            },
            Inst::Select(_, a, _) => match self.ty(a) {
                ValueType::F32 => math::fsel(b, ops[0], ops[1], ops[2]),
                _ => b.ins().bitselect(ops[0], ops[1], ops[2]),
            },
            Inst::I32ToF32(_) => b.ins().fcvt_from_sint(types::F32X4, ops[0]),
            Inst::Load(_) | Inst::Index(_) | Inst::RandUniform { .. } | Inst::Reduce(..) => {
                unreachable!("position-dependent instructions are emitted by their context")
            }
        }
    }

    fn operands(&self, inst: &Inst, local: &[Option<Value>]) -> Vec<Value> {
        inst.operands()
            .iter()
            .map(|&v| {
                let val = if self.level(v) == Level::Elem {
                    local[v.index()]
                } else {
                    self.uni[v.index()]
                };
                val.expect("schedule: operands are computed before their uses")
            })
            .collect()
    }

    /// Splat of a scalar loaded from `addr`.
    fn load_splat(&self, b: &mut FunctionBuilder<'_>, d: DType, addr: Value) -> Value {
        let s = b.ins().load(lane_type(d), data(), addr, 0);
        b.ins().splat(vec_type(d.into()), s)
    }

    fn splat_i64_as_i32(&self, b: &mut FunctionBuilder<'_>, x: Value) -> Value {
        let x32 = b.ins().ireduce(types::I32, x);
        b.ins().splat(types::I32X4, x32)
    }

    /// A kernel- or row-level value (row state absent for kernel level).
    fn emit_uniform(&mut self, b: &mut FunctionBuilder<'_>, v: ValueId, row: Option<&RowState>) {
        let inst = self.prog.body[v.index()];
        let val = match inst {
            Inst::Load(input) => {
                let decl = &self.prog.inputs[input.index()];
                let base = self.ptr[input.index()];
                match (decl.access, row) {
                    (InputAccess::Scalar, _) => self.load_splat(b, decl.dtype, base),
                    (InputAccess::PerRow, Some(row)) => {
                        let off = b.ins().ishl_imm_u(row.r, 2);
                        let addr = b.ins().iadd(base, off);
                        self.load_splat(b, decl.dtype, addr)
                    }
                    _ => unreachable!("schedule: only Scalar/PerRow loads are uniform"),
                }
            }
            Inst::Index(kind) => match (kind, row) {
                (IndexKind::Rows, _) => self.splat_i64_as_i32(b, self.rows),
                (IndexKind::Cols, _) => self.splat_i64_as_i32(b, self.cols),
                (IndexKind::Row, Some(row)) => self.splat_i64_as_i32(b, row.r),
                _ => unreachable!("schedule: the column index is element-level"),
            },
            Inst::Reduce(..) => {
                // Set by the column pass that accumulated it.
                return;
            }
            Inst::RandUniform { .. } => unreachable!("rand_uniform is element-level"),
            _ => {
                let ops = self.operands(&inst, &[]);
                self.pure_op(b, &inst, &ops)
            }
        };
        self.uni[v.index()] = Some(val);
    }

    fn emit_rand_key(&mut self, b: &mut FunctionBuilder<'_>, v: ValueId) {
        if self.rand_key[v.index()].is_some() {
            return;
        }
        let Inst::RandUniform { seed, step, stream } = self.prog.body[v.index()] else {
            return;
        };
        let (Some(s), Some(t)) = (self.uni[seed.index()], self.uni[step.index()]) else {
            unreachable!("schedule: rand_uniform's seed and step precede it")
        };
        let golden = ik(b, 0x9e37_79b9_u32 as i32);
        let k = b.ins().bxor(s, golden);
        let k = math::mix32(b, k);
        let k = b.ins().bxor(k, t);
        let k = math::mix32(b, k);
        let sc = ik(b, stream.wrapping_mul(0x85eb_ca6b) as i32);
        let k = b.ins().bxor(k, sc);
        let k = math::mix32(b, k);
        self.rand_key[v.index()] = Some(k);
    }

    /// Address of buffer `buf` at column `c` (i64 elements) for direct access, or its tail slot.
    fn addr(&self, b: &mut FunctionBuilder<'_>, buf: usize, row: &RowState, c: Value) -> Value {
        let base = row.row_base[buf].unwrap_or(self.ptr[buf]);
        let off = b.ins().ishl_imm_u(c, 2);
        b.ins().iadd(base, off)
    }

    fn slot_addr(&mut self, b: &mut FunctionBuilder<'_>, buf: usize) -> Value {
        let slot = match self.slot[buf] {
            Some(s) => s,
            None => {
                let s = b.create_sized_stack_slot(StackSlotData::new(
                    StackSlotKind::ExplicitSlot,
                    16,
                    4,
                ));
                self.slot[buf] = Some(s);
                s
            }
        };
        b.ins().stack_addr(types::I64, slot, 0)
    }

    /// Buffers a pass reads per column (`Full`/`PerCol` inputs), and writes (outputs).
    fn pass_buffers(&self, pass: &ColumnPass) -> (Vec<usize>, Vec<usize>) {
        let mut ins: Vec<usize> = pass
            .elem_values
            .iter()
            .filter_map(|&v| match self.prog.body[v.index()] {
                Inst::Load(i) => Some(i.index()),
                _ => None,
            })
            .collect();
        ins.sort_unstable();
        ins.dedup();
        let outs = pass.outputs.iter().map(|&o| self.n_inputs() + o).collect();
        (ins, outs)
    }

    /// One vector of columns: computes the pass's element values, accumulates its reductions
    /// and writes its outputs.
    #[allow(clippy::too_many_arguments)]
    fn step(
        &mut self,
        b: &mut FunctionBuilder<'_>,
        pass: &ColumnPass,
        row: &RowState,
        c: Value,
        mem: Mem,
        slot_addrs: &[(usize, Value)],
        accs: &[(ValueId, Vec<Variable>)],
    ) {
        let mut local: Vec<Option<Value>> = vec![None; self.prog.body.len()];
        let slot_of = |buf: usize| {
            slot_addrs
                .iter()
                .find(|(b, _)| *b == buf)
                .map(|&(_, a)| a)
                .expect("tail slots cover every buffer of the pass")
        };
        let col_vec = |b: &mut FunctionBuilder<'_>, gen: &Self| {
            let k = match mem {
                Mem::Direct { k } => k as i32,
                Mem::Tail { .. } => 0,
            };
            let base = gen.splat_i64_as_i32(b, c);
            let iota = ik4(b, [4 * k, 4 * k + 1, 4 * k + 2, 4 * k + 3]);
            b.ins().iadd(base, iota)
        };
        for &v in &pass.elem_values {
            let inst = self.prog.body[v.index()];
            let val = match inst {
                Inst::Load(input) => {
                    let ty = vec_type(self.prog.inputs[input.index()].dtype.into());
                    match mem {
                        Mem::Direct { k } => {
                            let a = self.addr(b, input.index(), row, c);
                            b.ins().load(ty, data(), a, (16 * k) as i32)
                        }
                        Mem::Tail { .. } => {
                            let a = slot_of(input.index());
                            b.ins().load(ty, data(), a, 0)
                        }
                    }
                }
                Inst::Index(_) => col_vec(b, self),
                Inst::RandUniform { .. } => {
                    let key = self.rand_key[v.index()].expect("keys precede the pass");
                    let cv = col_vec(b, self);
                    let flat = row.row_flat.expect("row_flat is set when rand is used");
                    let idx = b.ins().iadd(flat, cv);
                    let x = b.ins().bxor(idx, key);
                    let x = math::mix32(b, x);
                    let x = b.ins().iadd(x, key);
                    let x = math::mix32(b, x);
                    let top = b.ins().ushr_imm_u(x, 8);
                    let f = b.ins().fcvt_from_sint(types::F32X4, top);
                    let scale = fk(b, 1.0 / 16_777_216.0);
                    b.ins().fmul(f, scale)
                }
                _ => {
                    let ops = self.operands(&inst, &local);
                    self.pure_op(b, &inst, &ops)
                }
            };
            local[v.index()] = Some(val);
        }
        let value_of = |gen: &Self, v: ValueId| {
            if gen.level(v) == Level::Elem {
                local[v.index()]
            } else {
                gen.uni[v.index()]
            }
            .expect("schedule: pass roots are computed")
        };
        let acc_index = match mem {
            Mem::Direct { k } => k as usize,
            Mem::Tail { .. } => 0,
        };
        for (red, vars) in accs {
            let Inst::Reduce(op, a) = self.prog.body[red.index()] else {
                continue;
            };
            let mut x = value_of(self, a);
            if let Mem::Tail { valid } = mem {
                let neutral = match op {
                    ReduceOp::Sum => fk(b, 0.0),
                    ReduceOp::Max => fk(b, f32::NEG_INFINITY),
                };
                x = math::fsel(b, valid, x, neutral);
            }
            let var = vars[acc_index % vars.len()];
            let acc = b.use_var(var);
            let acc = match op {
                ReduceOp::Sum => b.ins().fadd(acc, x),
                ReduceOp::Max => math::fmax(b, acc, x),
            };
            b.def_var(var, acc);
        }
        for &o in &pass.outputs {
            let decl = &self.prog.outputs[o];
            let x = value_of(self, decl.value);
            let buf = self.n_inputs() + o;
            let (a, off) = match mem {
                Mem::Direct { k } => (self.addr(b, buf, row, c), (16 * k) as i32),
                Mem::Tail { .. } => (slot_of(buf), 0),
            };
            match decl.access {
                OutputAccess::Full => {
                    b.ins().store(data(), x, a, off);
                }
                OutputAccess::ColSum => {
                    let old = b.ins().load(types::F32X4, data(), a, off);
                    let new = b.ins().fadd(old, x);
                    b.ins().store(data(), new, a, off);
                }
                OutputAccess::PerRow | OutputAccess::Sum => {
                    unreachable!("schedule: per-row outputs are written after the passes")
                }
            }
        }
    }

    /// A counted loop `for c in (start..end).step_by(step)` whose body is `body(c)`; `start` and
    /// `end` are multiples of `step`.
    fn counted_loop(
        &mut self,
        b: &mut FunctionBuilder<'_>,
        start: Value,
        end: Value,
        step: i64,
        mut body: impl FnMut(&mut Self, &mut FunctionBuilder<'_>, Value),
    ) {
        let body_block = b.create_block();
        let c = b.append_block_param(body_block, types::I64);
        let after = b.create_block();
        let enter = b.ins().icmp(IntCC::SignedLessThan, start, end);
        b.ins()
            .brif(enter, body_block, &[BlockArg::Value(start)], after, &[]);
        b.switch_to_block(body_block);
        body(self, b, c);
        let next = b.ins().iadd_imm_s(c, step);
        let again = b.ins().icmp(IntCC::SignedLessThan, next, end);
        b.ins()
            .brif(again, body_block, &[BlockArg::Value(next)], after, &[]);
        b.switch_to_block(after);
    }

    fn emit_pass(&mut self, b: &mut FunctionBuilder<'_>, pass: &ColumnPass, row: &RowState) {
        for &v in &pass.elem_values {
            if matches!(self.prog.body[v.index()], Inst::RandUniform { .. }) {
                self.emit_rand_key(b, v);
            }
        }
        let u = self.unroll.max(1);
        let accs: Vec<(ValueId, Vec<Variable>)> = pass
            .reductions
            .iter()
            .map(|&red| {
                let Inst::Reduce(op, _) = self.prog.body[red.index()] else {
                    unreachable!("schedule: reductions are Reduce instructions")
                };
                let init = match op {
                    ReduceOp::Sum => 0.0,
                    ReduceOp::Max => f32::NEG_INFINITY,
                };
                let vars = (0..u)
                    .map(|_| {
                        let var = b.declare_var(types::F32X4);
                        let z = fk(b, init);
                        b.def_var(var, z);
                        var
                    })
                    .collect();
                (red, vars)
            })
            .collect();

        let cols = self.cols;
        let n_vec = b.ins().band_imm_s(cols, !3i64);
        let zero = b.ins().iconst(types::I64, 0);
        let n_main = if u > 1 {
            let n_main = b.ins().band_imm_s(cols, !(4 * u as i64 - 1));
            self.counted_loop(b, zero, n_main, 4 * u as i64, |g, b, c| {
                for k in 0..u {
                    g.step(b, pass, row, c, Mem::Direct { k }, &[], &accs);
                }
            });
            n_main
        } else {
            zero
        };
        self.counted_loop(b, n_main, n_vec, 4, |g, b, c| {
            g.step(b, pass, row, c, Mem::Direct { k: 0 }, &[], &accs);
        });

        // Tail: the last cols % 4 columns through stack slots.
        let rem = b.ins().band_imm_s(cols, 3);
        let tail = b.create_block();
        let after_tail = b.create_block();
        b.ins().brif(rem, tail, &[], after_tail, &[]);
        b.switch_to_block(tail);
        let (ins, outs) = self.pass_buffers(pass);
        let mut slot_addrs = vec![];
        let zero_v = fk(b, 0.0);
        for &buf in ins.iter().chain(&outs) {
            let a = self.slot_addr(b, buf);
            b.ins().store(data(), zero_v, a, 0);
            slot_addrs.push((buf, a));
        }
        // Copy in: inputs, and ColSum scratch (read-modify-write).
        let copy_in: Vec<usize> = ins
            .iter()
            .copied()
            .chain(outs.iter().copied().filter(|&buf| {
                self.prog.outputs[buf - self.n_inputs()].access == OutputAccess::ColSum
            }))
            .collect();
        let copy = |g: &mut Self, b: &mut FunctionBuilder<'_>, bufs: &[usize], into_slot: bool| {
            if bufs.is_empty() {
                return;
            }
            g.counted_loop(b, zero, rem, 1, |g, b, i| {
                let col = b.ins().iadd(n_vec, i);
                let si = b.ins().ishl_imm_u(i, 2);
                for &buf in bufs {
                    let src = g.addr(b, buf, row, col);
                    let slot = slot_addrs.iter().find(|(x, _)| *x == buf).map(|&(_, a)| a);
                    let slot = slot.expect("every copied buffer has a slot");
                    let sa = b.ins().iadd(slot, si);
                    if into_slot {
                        let x = b.ins().load(types::I32, data(), src, 0);
                        b.ins().store(data(), x, sa, 0);
                    } else {
                        let x = b.ins().load(types::I32, data(), sa, 0);
                        b.ins().store(data(), x, src, 0);
                    }
                }
            });
        };
        copy(self, b, &copy_in, true);
        let rem32 = b.ins().ireduce(types::I32, rem);
        let rem_v = b.ins().splat(types::I32X4, rem32);
        let iota = ik4(b, [0, 1, 2, 3]);
        let valid = b.ins().icmp(IntCC::SignedLessThan, iota, rem_v);
        self.step(b, pass, row, n_vec, Mem::Tail { valid }, &slot_addrs, &accs);
        copy(self, b, &outs, false);
        b.ins().jump(after_tail, &[]);
        b.switch_to_block(after_tail);

        // Combine the accumulators and reduce across lanes.
        for (red, vars) in &accs {
            let Inst::Reduce(op, _) = self.prog.body[red.index()] else {
                continue;
            };
            let mut acc = b.use_var(vars[0]);
            for &var in &vars[1..] {
                let x = b.use_var(var);
                acc = match op {
                    ReduceOp::Sum => b.ins().fadd(acc, x),
                    ReduceOp::Max => math::fmax(b, acc, x),
                };
            }
            let l: Vec<Value> = (0..4).map(|i| b.ins().extractlane(acc, i as u8)).collect();
            let s = match op {
                ReduceOp::Sum => {
                    let a = b.ins().fadd(l[0], l[1]);
                    let c = b.ins().fadd(l[2], l[3]);
                    b.ins().fadd(a, c)
                }
                ReduceOp::Max => {
                    let a = scalar_max(b, l[0], l[1]);
                    let c = scalar_max(b, l[2], l[3]);
                    scalar_max(b, a, c)
                }
            };
            let v = b.ins().splat(types::F32X4, s);
            self.uni[red.index()] = Some(v);
        }
    }

    fn emit_row(&mut self, b: &mut FunctionBuilder<'_>, r: Value) {
        let n_bufs = self.n_inputs() + self.prog.outputs.len();
        let any_full = self
            .prog
            .inputs
            .iter()
            .any(|i| i.access == InputAccess::Full)
            || self
                .prog
                .outputs
                .iter()
                .any(|o| o.access == OutputAccess::Full);
        let row_elems = b.ins().imul(r, self.cols);
        let mut row_base = vec![None; n_bufs];
        if any_full {
            let row_bytes = b.ins().ishl_imm_u(row_elems, 2);
            for (buf, slot) in row_base.iter_mut().enumerate() {
                let is_full = if buf < self.n_inputs() {
                    self.prog.inputs[buf].access == InputAccess::Full
                } else {
                    self.prog.outputs[buf - self.n_inputs()].access == OutputAccess::Full
                };
                if is_full {
                    *slot = Some(b.ins().iadd(self.ptr[buf], row_bytes));
                }
            }
        }
        let row_flat = if self.uses_rand() {
            let flat = b.ins().iadd(row_elems, self.index_base);
            Some(self.splat_i64_as_i32(b, flat))
        } else {
            None
        };
        let row = RowState {
            r,
            row_base,
            row_flat,
        };
        let sched = self.sched;
        for seg in &sched.segments {
            for &v in &seg.row_values {
                self.emit_uniform(b, v, Some(&row));
            }
            if let Some(pass) = &seg.pass {
                self.emit_pass(b, pass, &row);
            }
        }
        for &o in &sched.row_outputs {
            let decl = &self.prog.outputs[o];
            let v = self.uni[decl.value.index()].expect("row outputs are computed");
            let s = b.ins().extractlane(v, 0);
            let base = self.ptr[self.n_inputs() + o];
            match decl.access {
                OutputAccess::PerRow => {
                    let off = b.ins().ishl_imm_u(r, 2);
                    let a = b.ins().iadd(base, off);
                    b.ins().store(data(), s, a, 0);
                }
                OutputAccess::Sum => {
                    let old = b.ins().load(types::F32, data(), base, 0);
                    let new = b.ins().fadd(old, s);
                    b.ins().store(data(), new, base, 0);
                }
                OutputAccess::Full | OutputAccess::ColSum => {
                    unreachable!("schedule: only PerRow/Sum outputs are row outputs")
                }
            }
        }
    }
}

/// IR `max` on scalars: `a > c ? a : c`.
fn scalar_max(b: &mut FunctionBuilder<'_>, a: Value, c: Value) -> Value {
    let m = b.ins().fcmp(FloatCC::GreaterThan, a, c);
    b.ins().select(m, a, c)
}

/// Integer division or remainder lane by lane (no SIMD divide exists), with the IR's
/// no-trap rules: `x / 0 = 0`, `x % 0 = 0`, `MIN / -1 = MIN`.
fn int_div_rem(b: &mut FunctionBuilder<'_>, op: BinaryOp, x: Value, y: Value) -> Value {
    let mut out = x;
    for lane in 0..4u8 {
        let a = b.ins().extractlane(x, lane);
        let d = b.ins().extractlane(y, lane);
        let is0 = b.ins().icmp_imm_s(IntCC::Equal, d, 0);
        let ism1 = b.ins().icmp_imm_s(IntCC::Equal, d, -1);
        let bad = b.ins().bor(is0, ism1);
        let one = b.ins().iconst(types::I32, 1);
        let ds = b.ins().select(bad, one, d);
        let q = match op {
            BinaryOp::Div => {
                let q = b.ins().sdiv(a, ds);
                let na = b.ins().ineg(a);
                let q = b.ins().select(ism1, na, q);
                let zero = b.ins().iconst(types::I32, 0);
                b.ins().select(is0, zero, q)
            }
            // Dividing by 1 leaves remainder 0, which is also the answer for 0 and -1.
            _ => b.ins().srem(a, ds),
        };
        out = b.ins().insertlane(out, q, lane);
    }
    out
}

/// Emits the kernel function body into `b` (entry block not yet created).
pub(crate) fn emit(
    b: &mut FunctionBuilder<'_>,
    prog: &RowProgram,
    sched: &Schedule,
    target: Target,
    unroll: u32,
) {
    let entry = b.create_block();
    b.append_block_params_for_function_params(entry);
    b.switch_to_block(entry);
    let params: Vec<Value> = b.block_params(entry).to_vec();
    let (args, row_begin, row_end, cols, rows, index_base) = (
        params[0], params[1], params[2], params[3], params[4], params[5],
    );
    let n_bufs = prog.inputs.len() + prog.outputs.len();
    let ptr: Vec<Value> = (0..n_bufs)
        .map(|i| {
            b.ins()
                .load(types::I64, MemFlagsData::trusted(), args, (8 * i) as i32)
        })
        .collect();
    let mut g = Gen {
        prog,
        sched,
        target,
        unroll,
        ptr,
        cols,
        rows,
        index_base,
        uni: vec![None; prog.body.len()],
        rand_key: vec![None; prog.body.len()],
        slot: vec![None; n_bufs],
    };
    for &v in &sched.kernel_values {
        g.emit_uniform(b, v, None);
    }
    // Keys whose seed and step are kernel-level are computed once here.
    for (i, inst) in prog.body.iter().enumerate() {
        if let Inst::RandUniform { seed, step, .. } = inst {
            if sched.live[i] && g.level(*seed) == Level::Kernel && g.level(*step) == Level::Kernel {
                g.emit_rand_key(b, ValueId(i as u32));
            }
        }
    }

    let row_block: Block = b.create_block();
    let r = b.append_block_param(row_block, types::I64);
    let exit = b.create_block();
    let enter = b.ins().icmp(IntCC::SignedLessThan, row_begin, row_end);
    b.ins()
        .brif(enter, row_block, &[BlockArg::Value(row_begin)], exit, &[]);
    b.switch_to_block(row_block);
    g.emit_row(b, r);
    let next = b.ins().iadd_imm_s(r, 1);
    let again = b.ins().icmp(IntCC::SignedLessThan, next, row_end);
    b.ins()
        .brif(again, row_block, &[BlockArg::Value(next)], exit, &[]);
    b.switch_to_block(exit);
    b.ins().return_(&[]);
    b.seal_all_blocks();
}
