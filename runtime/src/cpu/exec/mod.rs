//! The fused CPU executor: runs a compiled [`Program`] step after step in one arena.
//!
//! Construction does all the work that does not depend on the data: the arena is planned by the
//! compiler's memory planner ([`arena::plan_arena`], the plan `kiln plan` reports) and allocated
//! once, exactly the planned bytes, every row program is JIT-compiled (shared through
//! a [`KernelCache`]), GEMM and attention parameters are resolved, and the buffer addresses of
//! every step are computed. A step then only copies the run's inputs in, launches the kernels
//! (row programs through the JIT, GEMMs through `cpu::gemm`, attention through
//! `cpu::attention`, data kernels through [`data`]), applies the state updates that were not
//! written in place, and reads the outputs out. The executor allocates nothing per step itself;
//! the JIT and GEMM front ends allocate a few small vectors per launch.
//!
//! Safety: the arena never moves after construction; every view of every step was checked
//! against its buffer by `Program::validate`, and the arena plan never overlaps two buffers that
//! are live in the same step, except a single-pass row kernel's output written over an input that
//! dies at that step (which the JIT allows), so the slices built from raw pointers below never
//! alias mutably.

pub mod arena;
pub mod data;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_compiler::kernel::data::WordType;
use kiln_compiler::kernel::{AttentionKernel, AttentionMask, Direction, GemmKernel, Kernel};
use kiln_compiler::program::{BufferKind, Launch, Program, View};

use super::attention::{
    attention_backward_with, attention_forward_with, AttentionGrads, AttentionInputs,
    AttentionParams, KernelChoice, Mask,
};
use super::gemm::{gemm, GemmParams, GemmThreads, MatView};
use super::jit::{JitKernel, KernelCache, Parallelism};

/// Why a program could not be prepared or run.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("invalid program: {0}")]
    Program(#[from] kiln_compiler::program::ProgramError),
    #[error("step {step} ({kind}, {origin}): {detail}")]
    Step {
        step: usize,
        kind: &'static str,
        origin: String,
        detail: String,
    },
    #[error("{0}")]
    Io(String),
}

/// A 64-byte aligned block of the arena.
#[derive(Clone, Copy, Default)]
#[repr(C, align(64))]
struct Line([u32; 16]);

/// One prepared step.
enum Prepared {
    Row {
        kernel: Arc<JitKernel>,
        ins: Vec<*const u8>,
        outs: Vec<*mut u8>,
        rows: usize,
        cols: usize,
    },
    Gemm {
        params: GemmParams,
        a: (usize, usize),
        b: (usize, usize),
        c: (usize, usize),
        views: [MatView; 3],
    },
    Attention {
        kernel: AttentionKernel,
        /// (word offset, length) of every input and output view.
        ins: Vec<(usize, usize)>,
        outs: Vec<(usize, usize)>,
        /// Word types of the length inputs (prefix, key) when present.
        prefix: Option<(usize, WordType)>,
        key_len: Option<(usize, WordType)>,
        prefix_buf: Vec<usize>,
        key_buf: Vec<usize>,
    },
    Data {
        kernel: kiln_compiler::kernel::data::DataKernel,
        ins: Vec<(usize, usize)>,
        out: (usize, usize),
    },
}

/// Time and work per kernel kind.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KindProfile {
    pub kind: &'static str,
    pub launches: u64,
    pub time: Duration,
    pub flops: u64,
}

impl KindProfile {
    pub fn gflops(&self) -> f64 {
        let s = self.time.as_secs_f64();
        if s == 0.0 {
            0.0
        } else {
            self.flops as f64 / s / 1e9
        }
    }
}

/// Accumulated per-kind timings since the last reset.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Profile {
    pub steps: u64,
    pub kinds: Vec<KindProfile>,
}

impl Profile {
    pub fn total(&self) -> Duration {
        self.kinds.iter().map(|k| k.time).sum()
    }
}

impl std::fmt::Display for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let total = self.total().as_secs_f64().max(1e-12);
        let per = |d: Duration| d.as_secs_f64() * 1e3 / self.steps.max(1) as f64;
        writeln!(
            f,
            "{:<20} {:>9} {:>11} {:>7} {:>9}",
            "kind", "launches", "ms/step", "share", "GFLOP/s"
        )?;
        for k in &self.kinds {
            writeln!(
                f,
                "{:<20} {:>9} {:>11.3} {:>6.1}% {:>9.1}",
                k.kind,
                k.launches / self.steps.max(1),
                per(k.time),
                100.0 * k.time.as_secs_f64() / total,
                k.gflops()
            )?;
        }
        writeln!(f, "{:<20} {:>9} {:>11.3}", "total", "", per(self.total()))
    }
}

pub struct Executor {
    program: Program,
    arena: Vec<Line>,
    plan: arena::ArenaPlan,
    steps: Vec<Prepared>,
    step_flops: Vec<u64>,
    profiling: bool,
    prof: BTreeMap<&'static str, KindProfile>,
    prof_steps: u64,
    /// Time per step of the program (profiling only).
    step_time: Vec<Duration>,
    /// Fastest launch of each step of the program (profiling only): robust to other load.
    step_min: Vec<Duration>,
    /// `pair[i]`: step `i` is a GEMM that runs at the same time as GEMM `i + 1`, each on one
    /// thread (see [`gemm_pairs`]).
    pair: Vec<bool>,
}

/// Word range `[offset, offset + len)` overlap.
fn overlaps(a: (usize, usize), b: (usize, usize)) -> bool {
    a.0 < b.0 + b.1 && b.0 < a.0 + a.1
}

/// Which consecutive GEMMs may run concurrently, one thread each: neither reads or writes what
/// the other writes (arena ranges, so reuse of freed words counts too). The backward of every
/// linear layer is such a pair (`dX = dY·Wᵀ` and `dW = Xᵀ·dY`, both reading `dY`): two small
/// products on one core each keep both cores busier than each product split across both.
/// `KILN_NO_GEMM_PAIRS=1` turns pairing off (to time the difference).
fn gemm_pairs(steps: &[Prepared]) -> Vec<bool> {
    let mut pair = vec![false; steps.len()];
    if rayon::current_num_threads() < 2 || std::env::var_os("KILN_NO_GEMM_PAIRS").is_some() {
        return pair;
    }
    let mut i = 0;
    while i + 1 < steps.len() {
        if let (
            Prepared::Gemm {
                params: p1,
                a: a1,
                b: b1,
                c: c1,
                ..
            },
            Prepared::Gemm {
                params: p2,
                a: a2,
                b: b2,
                c: c2,
                ..
            },
        ) = (&steps[i], &steps[i + 1])
        {
            let independent = !overlaps(*c1, *a2)
                && !overlaps(*c1, *b2)
                && !overlaps(*c1, *c2)
                && !overlaps(*c2, *a1)
                && !overlaps(*c2, *b1);
            // Similar sizes only: a lopsided pair would leave one core idle.
            let f = |p: &GemmParams| (p.batch * p.m * p.n * p.k) as f64;
            let ratio = f(p1).max(f(p2)) / f(p1).min(f(p2)).max(1.0);
            if independent && ratio <= 2.0 {
                pair[i] = true;
                i += 2;
                continue;
            }
        }
        i += 1;
    }
    pair
}

/// The arena base pointer, sent to the two threads of a GEMM pair.
#[derive(Clone, Copy)]
struct Base(*mut u32);
// SAFETY: a pair's two GEMMs touch disjoint words of the arena (`gemm_pairs`).
unsafe impl Send for Base {}
unsafe impl Sync for Base {}

// SAFETY: the raw pointers held by prepared steps point into `arena`, which the executor owns
// and never reallocates; moving the executor to another thread moves the arena's ownership with
// it, and `&self` methods never write through them.
unsafe impl Send for Executor {}

impl Executor {
    /// Validates the program, plans and allocates the arena, compiles every row program.
    pub fn new(program: Program, cache: &KernelCache) -> Result<Executor, ExecError> {
        program.validate()?;
        let plan = arena::plan_arena(&program);
        // Exactly the planned bytes (a multiple of the planner's alignment, itself of the line).
        let mut arena = vec![Line::default(); plan.words.div_ceil(16)];
        let base = arena.as_mut_ptr() as *mut u32;
        let off = |v: &View| plan.offsets[v.buf.index()] + v.offset;
        let mut steps = Vec::with_capacity(program.steps.len());
        for (si, st) in program.steps.iter().enumerate() {
            let err = |detail: String| ExecError::Step {
                step: si,
                kind: st.kind(),
                origin: st.origin.clone(),
                detail,
            };
            let prepared = match (&st.kernel, st.launch) {
                (Kernel::Row(p), Launch::Grid { rows, cols }) => {
                    let kernel = cache.get_or_compile(p).map_err(|e| err(e.to_string()))?;
                    // SAFETY (pointer arithmetic): offsets are inside the arena (planned from
                    // validated views).
                    let ins = st
                        .inputs
                        .iter()
                        .map(|v| unsafe { base.add(off(v)) } as *const u8)
                        .collect();
                    let outs = st
                        .outputs
                        .iter()
                        .map(|v| unsafe { base.add(off(v)) } as *mut u8)
                        .collect();
                    Prepared::Row {
                        kernel,
                        ins,
                        outs,
                        rows,
                        cols,
                    }
                }
                (Kernel::Row(_), Launch::Once) => {
                    return Err(err("a row program without a grid".into()))
                }
                (Kernel::Gemm(g), _) => {
                    let (params, views) = gemm_params(g);
                    Prepared::Gemm {
                        params,
                        a: (off(&st.inputs[0]), st.inputs[0].len),
                        b: (off(&st.inputs[1]), st.inputs[1].len),
                        c: (off(&st.outputs[0]), st.outputs[0].len),
                        views,
                    }
                }
                (Kernel::Attention(a), _) => {
                    let first_extra = match a.direction {
                        Direction::Forward => 3,
                        Direction::Backward => 6,
                    };
                    let mut at = first_extra + usize::from(a.has_bias);
                    let word = |i: usize| program.buffer(st.inputs[i].buf).word;
                    let prefix = (a.mask == AttentionMask::PrefixLmLengths).then(|| {
                        at += 1;
                        (at - 1, word(at - 1))
                    });
                    let key_len = a.key_padding.then(|| {
                        at += 1;
                        (at - 1, word(at - 1))
                    });
                    Prepared::Attention {
                        kernel: *a,
                        ins: st.inputs.iter().map(|v| (off(v), v.len)).collect(),
                        outs: st.outputs.iter().map(|v| (off(v), v.len)).collect(),
                        prefix,
                        key_len,
                        prefix_buf: vec![0; a.batch],
                        key_buf: vec![0; a.batch],
                    }
                }
                (Kernel::Data(d), _) => Prepared::Data {
                    kernel: d.clone(),
                    ins: st.inputs.iter().map(|v| (off(v), v.len)).collect(),
                    out: (off(&st.outputs[0]), st.outputs[0].len),
                },
            };
            steps.push(prepared);
        }
        let step_flops = program.steps.iter().map(|s| s.flops()).collect();
        let mut ex = Executor {
            program,
            arena,
            plan,
            steps,
            step_flops,
            profiling: false,
            prof: BTreeMap::new(),
            prof_steps: 0,
            step_time: Vec::new(),
            step_min: Vec::new(),
            pair: Vec::new(),
        };
        ex.pair = gemm_pairs(&ex.steps);
        ex.load_constants();
        Ok(ex)
    }

    pub fn program(&self) -> &Program {
        &self.program
    }

    /// Bytes of the arena as allocated (inputs, state, outputs, constants and the shared
    /// temporaries): the allocation's capacity, not the plan's figure.
    pub fn arena_bytes(&self) -> usize {
        self.arena.capacity() * std::mem::size_of::<Line>()
    }

    /// The arena plan (offsets in words, and the planner's byte plan).
    pub fn arena_plan(&self) -> &arena::ArenaPlan {
        &self.plan
    }

    fn words(&self) -> &[u32] {
        // SAFETY: `Line` is `repr(C)` of 16 `u32`s with no padding.
        unsafe {
            std::slice::from_raw_parts(self.arena.as_ptr() as *const u32, self.arena.len() * 16)
        }
    }

    fn words_mut(&mut self) -> &mut [u32] {
        // SAFETY: as in `words`.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.arena.as_mut_ptr() as *mut u32,
                self.arena.len() * 16,
            )
        }
    }

    fn load_constants(&mut self) {
        let consts: Vec<(usize, Vec<u32>)> = self
            .program
            .buffers
            .iter()
            .enumerate()
            .filter_map(|(i, b)| match &b.kind {
                BufferKind::Const(d) => Some((self.plan.offsets[i], d.words())),
                _ => None,
            })
            .collect();
        let w = self.words_mut();
        for (o, d) in consts {
            w[o..o + d.len()].copy_from_slice(&d);
        }
    }

    /// The words of a buffer view.
    pub fn read(&self, v: &View) -> &[u32] {
        let o = self.plan.offsets[v.buf.index()] + v.offset;
        &self.words()[o..o + v.len]
    }

    /// Fills a buffer view element by element (no temporary).
    pub fn write_with(&mut self, v: &View, f: impl Fn(usize) -> u32) {
        let o = self.plan.offsets[v.buf.index()] + v.offset;
        for (i, w) in self.words_mut()[o..o + v.len].iter_mut().enumerate() {
            *w = f(i);
        }
    }

    /// Writes a whole buffer view.
    pub fn write(&mut self, v: &View, data: &[u32]) {
        let o = self.plan.offsets[v.buf.index()] + v.offset;
        self.words_mut()[o..o + v.len].copy_from_slice(data);
    }

    pub fn set_profiling(&mut self, on: bool) {
        self.profiling = on;
    }

    pub fn reset_profile(&mut self) {
        self.prof.clear();
        self.prof_steps = 0;
        self.step_time.clear();
        self.step_min.clear();
    }

    /// Per kind, the sum over the program's steps of each step's fastest launch since the last
    /// reset: what a step costs without interference from other processes.
    pub fn fastest_by_kind(&self) -> Vec<(&'static str, Duration)> {
        let mut m: BTreeMap<&'static str, Duration> = BTreeMap::new();
        for (i, t) in self.step_min.iter().enumerate() {
            *m.entry(self.program.steps[i].kind()).or_default() += *t;
        }
        let mut v: Vec<(&'static str, Duration)> = m.into_iter().collect();
        v.sort_by_key(|b| std::cmp::Reverse(b.1));
        v
    }

    /// The `n` program steps whose fastest launch since the last reset took longest.
    pub fn slowest_steps(&self, n: usize) -> Vec<(usize, Duration)> {
        let mut v: Vec<(usize, Duration)> = self.step_min.iter().copied().enumerate().collect();
        v.sort_by_key(|b| std::cmp::Reverse(b.1));
        v.truncate(n);
        v
    }

    pub fn profile(&self) -> Profile {
        let mut kinds: Vec<KindProfile> = self.prof.values().cloned().collect();
        kinds.sort_by_key(|b| std::cmp::Reverse(b.time));
        Profile {
            steps: self.prof_steps,
            kinds,
        }
    }

    /// Runs every step, then the updates that were not written in place. Inputs must already be
    /// in their buffers.
    pub fn run_steps(&mut self, seed: u64, step: u64) -> Result<(), ExecError> {
        let base = self.arena.as_mut_ptr() as *mut u32;
        let mut paired_second = false;
        for si in 0..self.steps.len() {
            if paired_second {
                // Ran with the previous step; its time was recorded there.
                paired_second = false;
                continue;
            }
            let t0 = self.profiling.then(Instant::now);
            if self.pair[si] {
                // SAFETY: the pair's views are disjoint (`gemm_pairs`), inside the arena.
                unsafe { self.run_gemm_pair(si, Base(base)) }?;
                paired_second = true;
            } else {
                // SAFETY: see the module doc; `base` is the arena this executor owns.
                unsafe { self.run_one(si, base, seed, step) }?;
            }
            if let Some(t0) = t0 {
                let kind = self.program.steps[si].kind();
                let e = self.prof.entry(kind).or_insert_with(|| KindProfile {
                    kind,
                    ..Default::default()
                });
                let dt = t0.elapsed();
                // A GEMM pair is one launch of two products: each gets half the time.
                let members: &[usize] = if paired_second { &[si, si + 1] } else { &[si] };
                let share = dt / members.len() as u32;
                e.time += dt;
                for &i in members {
                    e.launches += 1;
                    e.flops += self.step_flops[i];
                }
                if self.step_time.len() < self.steps.len() {
                    self.step_time.resize(self.steps.len(), Duration::ZERO);
                    self.step_min.resize(self.steps.len(), Duration::MAX);
                }
                for &i in members {
                    self.step_time[i] += share;
                    self.step_min[i] = self.step_min[i].min(share);
                }
            }
        }
        let t0 = self.profiling.then(Instant::now);
        for ui in 0..self.program.updates.len() {
            let u = &self.program.updates[ui];
            let Some(s) = self.program.state_decl(&u.target) else {
                continue;
            };
            if u.view.buf == s.buffer {
                continue;
            }
            let (src, dst) = (
                self.plan.offsets[u.view.buf.index()] + u.view.offset,
                self.plan.offsets[s.buffer.index()],
            );
            let len = u.view.len;
            self.words_mut().copy_within(src..src + len, dst);
        }
        if let Some(t0) = t0 {
            let e = self
                .prof
                .entry("update.copy")
                .or_insert_with(|| KindProfile {
                    kind: "update.copy",
                    ..Default::default()
                });
            e.launches += 1;
            e.time += t0.elapsed();
            self.prof_steps += 1;
        }
        Ok(())
    }

    /// Runs GEMMs `si` and `si + 1` at once, each on one thread.
    ///
    /// # Safety
    /// `base` must be this executor's arena and `pair[si]` set (disjoint views).
    unsafe fn run_gemm_pair(&self, si: usize, base: Base) -> Result<(), ExecError> {
        type Job = (
            GemmParams,
            (usize, usize),
            (usize, usize),
            (usize, usize),
            [MatView; 3],
        );
        let job = |i: usize| -> Option<Job> {
            match &self.steps[i] {
                Prepared::Gemm {
                    params,
                    a,
                    b,
                    c,
                    views,
                } => Some((
                    GemmParams {
                        threads: GemmThreads::Single,
                        ..*params
                    },
                    *a,
                    *b,
                    *c,
                    *views,
                )),
                _ => None,
            }
        };
        let run = |j: Option<Job>| -> Result<(), String> {
            let Some((p, a, b, c, views)) = j else {
                return Ok(());
            };
            let base = base;
            // SAFETY: validated views inside the arena; `c` is disjoint from everything the
            // other GEMM of the pair reads or writes.
            let (sa, sb, sc) = unsafe {
                (
                    std::slice::from_raw_parts(base.0.add(a.0) as *const f32, a.1),
                    std::slice::from_raw_parts(base.0.add(b.0) as *const f32, b.1),
                    std::slice::from_raw_parts_mut(base.0.add(c.0) as *mut f32, c.1),
                )
            };
            gemm(&p, sa, views[0], sb, views[1], sc, views[2]).map_err(|e| e.to_string())
        };
        let (j1, j2) = (job(si), job(si + 1));
        let (r1, r2) = rayon::join(|| run(j1), || run(j2));
        for (i, r) in [(si, r1), (si + 1, r2)] {
            if let Err(detail) = r {
                let st = &self.program.steps[i];
                return Err(ExecError::Step {
                    step: i,
                    kind: st.kind(),
                    origin: st.origin.clone(),
                    detail,
                });
            }
        }
        Ok(())
    }

    /// # Safety
    /// `base` must be this executor's arena; the step's views do not overlap (planner).
    unsafe fn run_one(
        &mut self,
        si: usize,
        base: *mut u32,
        seed: u64,
        step: u64,
    ) -> Result<(), ExecError> {
        let st = &self.program.steps[si];
        let err = |detail: String| ExecError::Step {
            step: si,
            kind: st.kind(),
            origin: st.origin.clone(),
            detail,
        };
        // SAFETY: every (offset, len) below is a validated view inside the arena.
        let slice = |(o, n): (usize, usize)| unsafe {
            std::slice::from_raw_parts(base.add(o) as *const f32, n)
        };
        let slice_mut = |(o, n): (usize, usize)| unsafe {
            std::slice::from_raw_parts_mut(base.add(o) as *mut f32, n)
        };
        let words = |(o, n): (usize, usize)| unsafe {
            std::slice::from_raw_parts(base.add(o) as *const u32, n)
        };
        match &mut self.steps[si] {
            Prepared::Row {
                kernel,
                ins,
                outs,
                rows,
                cols,
            } => {
                // SAFETY: pointers and lengths match the program's accesses (validated); outputs
                // never overlap inputs except the in-place single-pass updates fusion allows.
                unsafe { kernel.run_raw(ins, outs, *rows, *cols, Parallelism::Auto) }
                    .map_err(|e| err(e.to_string()))?;
            }
            Prepared::Gemm {
                params,
                a,
                b,
                c,
                views,
            } => {
                gemm(
                    params,
                    slice(*a),
                    views[0],
                    slice(*b),
                    views[1],
                    slice_mut(*c),
                    views[2],
                )
                .map_err(|e| err(e.to_string()))?;
            }
            Prepared::Attention {
                kernel,
                ins,
                outs,
                prefix,
                key_len,
                prefix_buf,
                key_buf,
            } => {
                if let Some((i, w)) = prefix {
                    data::lengths(words(ins[*i]), *w, prefix_buf);
                }
                if let Some((i, w)) = key_len {
                    data::lengths(words(ins[*i]), *w, key_buf);
                }
                let k = *kernel;
                let mask = match k.mask {
                    AttentionMask::Full => Mask::Full,
                    AttentionMask::Causal => Mask::Causal,
                    AttentionMask::Local { window } => Mask::Banded { window },
                    AttentionMask::PrefixLm { prefix } => {
                        prefix_buf.iter_mut().for_each(|p| *p = prefix);
                        Mask::PrefixLm {
                            prefix_len: prefix_buf,
                        }
                    }
                    AttentionMask::PrefixLmLengths => Mask::PrefixLm {
                        prefix_len: prefix_buf,
                    },
                };
                let params = AttentionParams {
                    batch: k.batch,
                    q_heads: k.heads,
                    kv_heads: k.kv_heads,
                    q_len: k.q_len,
                    kv_len: k.kv_len,
                    head_dim: k.head_dim,
                    scale: k.scale,
                    mask,
                    key_len: key_len.map(|_| key_buf.as_slice()),
                    kernel: KernelChoice::Auto,
                };
                let bias_at = match k.direction {
                    Direction::Forward => 3,
                    Direction::Backward => 6,
                };
                let x = AttentionInputs {
                    q: slice(ins[0]),
                    k: slice(ins[1]),
                    v: slice(ins[2]),
                    bias: k.has_bias.then(|| slice(ins[bias_at])),
                };
                match k.direction {
                    Direction::Forward => attention_forward_with(
                        &params,
                        &k.layout,
                        &x,
                        slice_mut(outs[0]),
                        slice_mut(outs[1]),
                    ),
                    Direction::Backward => attention_backward_with(
                        &params,
                        &k.layout,
                        &x,
                        slice(ins[3]),
                        slice(ins[5]),
                        slice(ins[4]),
                        AttentionGrads {
                            dq: slice_mut(outs[0]),
                            dk: slice_mut(outs[1]),
                            dv: slice_mut(outs[2]),
                            dbias: k.has_bias.then(|| slice_mut(outs[3])),
                        },
                    ),
                }
                .map_err(|e| err(e.to_string()))?;
            }
            Prepared::Data { kernel, ins, out } => {
                // SAFETY: the output view is a validated arena range not live in any input.
                let o = unsafe { std::slice::from_raw_parts_mut(base.add(out.0), out.1) };
                let mut fixed: [&[u32]; 8] = [&[]; 8];
                let r = if ins.len() <= fixed.len() {
                    for (f, v) in fixed.iter_mut().zip(ins.iter()) {
                        *f = words(*v);
                    }
                    data::run(kernel, &fixed[..ins.len()], o, seed, step)
                } else {
                    let list: Vec<&[u32]> = ins.iter().map(|v| words(*v)).collect();
                    data::run(kernel, &list, o, seed, step)
                };
                r.map_err(|e| err(e.to_string()))?;
            }
        }
        Ok(())
    }
}

/// GEMM front-end parameters and the views of A, B, C for a kernel-IR GEMM.
fn gemm_params(g: &GemmKernel) -> (GemmParams, [MatView; 3]) {
    let a = if g.a.transposed {
        MatView::row_major(g.k, g.m).t()
    } else {
        MatView::row_major(g.m, g.k)
    }
    .with_batch_stride(g.a.batch_stride);
    let b = if g.b.transposed {
        MatView::row_major(g.n, g.k).t()
    } else {
        MatView::row_major(g.k, g.n)
    }
    .with_batch_stride(g.b.batch_stride);
    let c = MatView::row_major(g.m, g.n);
    let params = GemmParams {
        batch: g.batch,
        m: g.m,
        n: g.n,
        k: g.k,
        alpha: g.alpha,
        beta: if g.accumulate { 1.0 } else { 0.0 },
        threads: GemmThreads::Auto,
    };
    (params, [a, b, c])
}
