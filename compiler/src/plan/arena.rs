//! The arena of a fused [`Program`]: the memory planner (`plan::memory`) run over the program's
//! kernel schedule, so the CPU runtime allocates exactly what the planner plans.
//!
//! [`program_schedule`] turns a program into the planner's input, one step per kernel step:
//! - a step reads the buffers of its input views and writes the buffers of its output views
//!   (a GEMM that accumulates also reads its output). Views (reshapes, contiguous slices) already
//!   address their buffer's words, so buffers are the unit of placement and no planner-level views
//!   are needed;
//! - a write may take a dying read's bytes in place only where the kernel allows it: a row
//!   program with at most one column pass (the JIT's aliasing contract, the same test fusion uses
//!   for its in-place optimizer updates), a `Full` output over a `Full` input of the same length,
//!   both whole buffers, and no other view of that input in the step;
//! - `State`, `Input` and `Const` buffers are present before the first step; `Output` buffers,
//!   constants (written once, before the first step) and state that no update replaces are held
//!   to the end of the step (they must survive into the next one);
//! - `target ← view` updates whose view is not already the state buffer (fusion writes the
//!   optimizer's result in place where it can) are the planner's state updates: placed in the
//!   state's slot when legal, copied at the end otherwise.
//!
//! Input buffers may be reused after their last read: the runtime fills them again at the start of
//! every step. All offsets and sizes are multiples of [`ALIGNMENT`] bytes.
//!
//! Categories ([`ProgramArena::bytes`]) come from the buffers' kinds and the steps' roles. A step
//! is *forward* when the `loss` or `logits` output depends on it (any output, in a program without
//! those), *optimizer* when it is not forward and one of the name paths it computes starts with
//! `optim` (as the training step names its update; `plan::roles` reads the same names), and
//! *backward* otherwise. Then: `State` buffers are
//! parameters, or optimizer state when named `opt.m.*`, `opt.v.*` or `opt.buf.*`; a buffer written
//! by a backward step and read by an optimizer step is a gradient; one written by a forward step
//! and read by a backward step is an activation kept for backward; everything else (inputs,
//! constants, outputs, transient values, new state before it is committed) is workspace. The
//! breakdown is taken at the time of the live peak and the arena's fragmentation (`total -
//! live_peak`) is counted as workspace, so the five categories sum to the arena's total.

use std::collections::HashMap;

use super::memory::{plan_memory, Category, CategoryBytes, MemoryInput, MemoryPlan};
use super::roles::Phase;
use super::schedule::{BufKey, Schedule, Step};
use crate::kernel::{schedule as row_schedule, InputAccess, Kernel, OutputAccess};
use crate::program::{BufferKind, Program, View};

/// Bytes every buffer offset and size is a multiple of (one cache line).
pub const ALIGNMENT: u64 = 64;

/// The planned arena of a program.
#[derive(Clone, Debug)]
pub struct ProgramArena {
    pub schedule: Schedule,
    pub input: MemoryInput,
    pub memory: MemoryPlan,
    /// Byte offset of every buffer of the program, by buffer index (0 for a buffer no step,
    /// update or output touches: it is never read or written).
    pub offsets: Vec<u64>,
    /// The role of every step (forward, backward, optimizer).
    pub phases: Vec<Phase>,
    /// The category of every buffer.
    pub categories: Vec<Category>,
    /// Bytes by category (see the module doc); sums to [`ProgramArena::total`].
    pub bytes: CategoryBytes,
}

impl ProgramArena {
    /// Bytes to allocate.
    pub fn total(&self) -> u64 {
        self.memory.arena.total
    }

    /// The most bytes alive at one time: a lower bound on any placement.
    pub fn live_peak(&self) -> u64 {
        self.memory.live_peak
    }
}

fn key(v: &View) -> BufKey {
    BufKey::Buffer(v.buf.0)
}

fn is_whole(p: &Program, v: &View) -> bool {
    v.offset == 0 && v.len == p.buffer(v.buf).len
}

/// The planner's input for `p` (see the module doc).
pub fn program_schedule(p: &Program) -> (Schedule, MemoryInput) {
    let mut writes_of: HashMap<BufKey, usize> = HashMap::new();
    for st in &p.steps {
        let mut seen: Vec<BufKey> = Vec::new();
        for v in &st.outputs {
            if !seen.contains(&key(v)) {
                seen.push(key(v));
                *writes_of.entry(key(v)).or_insert(0) += 1;
            }
        }
    }
    let mut steps = Vec::with_capacity(p.steps.len());
    for st in &p.steps {
        let mut reads: Vec<BufKey> = Vec::new();
        for v in &st.inputs {
            if !reads.contains(&key(v)) {
                reads.push(key(v));
            }
        }
        if let Kernel::Gemm(g) = &st.kernel {
            if g.accumulate {
                // `D += A·B` reads the output's old value.
                for v in &st.outputs {
                    if !reads.contains(&key(v)) {
                        reads.push(key(v));
                    }
                }
            }
        }
        let mut writes: Vec<BufKey> = Vec::new();
        for v in &st.outputs {
            if !writes.contains(&key(v)) {
                writes.push(key(v));
            }
        }
        let mut in_place: Vec<(BufKey, BufKey)> = Vec::new();
        if let Kernel::Row(prog) = &st.kernel {
            let single_pass = row_schedule(prog)
                .map(|s| s.passes().count() <= 1)
                .unwrap_or(false);
            if single_pass {
                for (o, ov) in prog.outputs.iter().zip(&st.outputs) {
                    let w = key(ov);
                    if o.access != OutputAccess::Full
                        || !is_whole(p, ov)
                        || writes_of.get(&w) != Some(&1)
                        || reads.contains(&w)
                    {
                        continue;
                    }
                    for (i, iv) in prog.inputs.iter().zip(&st.inputs) {
                        let r = key(iv);
                        // Every view of the read in this step must be the whole buffer, read
                        // element for element where the output is written.
                        let aligned = prog.inputs.iter().zip(&st.inputs).all(|(j, jv)| {
                            jv.buf != iv.buf || (j.access == InputAccess::Full && is_whole(p, jv))
                        });
                        if i.access == InputAccess::Full
                            && aligned
                            && iv.len == ov.len
                            && !st.outputs.iter().any(|x| x.buf == iv.buf)
                            && !in_place.iter().any(|(_, x)| *x == r)
                        {
                            in_place.push((w, r));
                        }
                    }
                }
            }
        }
        steps.push(Step {
            reads,
            writes,
            in_place,
            views: Vec::new(),
            node: None,
        });
    }
    let mut input = MemoryInput {
        alignment: ALIGNMENT,
        ..Default::default()
    };
    for (i, b) in p.buffers.iter().enumerate() {
        input
            .sizes
            .insert(BufKey::Buffer(i as u32), b.len as u64 * 4);
    }
    // State replaced by a copy at the end (or placed at home by the planner).
    let mut updated: Vec<usize> = Vec::new();
    for u in &p.updates {
        let Some(s) = p.state_decl(&u.target) else {
            continue;
        };
        if u.view.buf != s.buffer {
            input
                .updates
                .push((u.target.clone(), BufKey::Buffer(s.buffer.0), key(&u.view)));
            updated.push(s.buffer.index());
        }
    }
    for (i, b) in p.buffers.iter().enumerate() {
        let k = BufKey::Buffer(i as u32);
        match &b.kind {
            BufferKind::State(_) => {
                input.preloaded.push(k);
                if !updated.contains(&i) {
                    input.outputs.push(k);
                }
            }
            BufferKind::Const(_) => {
                input.preloaded.push(k);
                input.outputs.push(k);
            }
            BufferKind::Input(_) => input.preloaded.push(k),
            BufferKind::Output(_) => input.outputs.push(k),
            BufferKind::Temp => {}
        }
    }
    for o in &p.outputs {
        if !input.outputs.contains(&key(&o.view)) {
            input.outputs.push(key(&o.view));
        }
    }
    (Schedule { steps }, input)
}

/// Forward, backward or optimizer, for every step (see the module doc).
pub fn step_phases(p: &Program) -> Vec<Phase> {
    let n = p.steps.len();
    let mut writers: HashMap<usize, Vec<usize>> = HashMap::new();
    for (i, st) in p.steps.iter().enumerate() {
        for v in &st.outputs {
            writers.entry(v.buf.index()).or_default().push(i);
        }
    }
    let mut forward = vec![false; n];
    // The forward outputs, as `plan::roles` has them (a step also outputs the gradient norm).
    let named: Vec<&crate::program::OutputDecl> = p
        .outputs
        .iter()
        .filter(|o| o.name == "loss" || o.name == "logits")
        .collect();
    let roots: Vec<&crate::program::OutputDecl> = if named.is_empty() {
        p.outputs.iter().collect()
    } else {
        named
    };
    let mut stack: Vec<usize> = roots
        .iter()
        .flat_map(|o| {
            writers
                .get(&o.view.buf.index())
                .cloned()
                .unwrap_or_default()
        })
        .collect();
    while let Some(s) = stack.pop() {
        if forward[s] {
            continue;
        }
        forward[s] = true;
        // Only earlier writes reach this step (the optimizer writes parameters in place after
        // the forward has read them).
        for v in &p.steps[s].inputs {
            if let Some(ws) = writers.get(&v.buf.index()) {
                stack.extend(ws.iter().copied().filter(|w| *w < s && !forward[*w]));
            }
        }
    }
    p.steps
        .iter()
        .enumerate()
        .map(|(i, st)| {
            let optim = st
                .scopes
                .iter()
                .chain(std::iter::once(&st.origin))
                .any(|s| s == "optim" || s.starts_with("optim."));
            if forward[i] {
                Phase::Forward
            } else if optim {
                Phase::Optimizer
            } else {
                Phase::Backward
            }
        })
        .collect()
}

/// The category of every buffer given the steps' phases (see the module doc).
pub fn buffer_categories(p: &Program, phases: &[Phase]) -> Vec<Category> {
    let nb = p.buffers.len();
    let mut written: Vec<Vec<Phase>> = vec![Vec::new(); nb];
    let mut read: Vec<Vec<Phase>> = vec![Vec::new(); nb];
    for (st, ph) in p.steps.iter().zip(phases) {
        for v in &st.outputs {
            written[v.buf.index()].push(*ph);
        }
        for v in &st.inputs {
            read[v.buf.index()].push(*ph);
        }
    }
    p.buffers
        .iter()
        .enumerate()
        .map(|(i, b)| match &b.kind {
            BufferKind::State(name) => {
                if ["opt.m.", "opt.v.", "opt.buf."]
                    .iter()
                    .any(|pre| name.starts_with(pre))
                {
                    Category::Optimizer
                } else {
                    Category::Params
                }
            }
            BufferKind::Input(_) | BufferKind::Const(_) => Category::Workspace,
            BufferKind::Temp | BufferKind::Output(_) => {
                let w = |ph: Phase| written[i].contains(&ph);
                let r = |ph: Phase| read[i].contains(&ph);
                if w(Phase::Backward) && r(Phase::Optimizer) {
                    Category::Grads
                } else if w(Phase::Forward) && r(Phase::Backward) {
                    Category::Activations
                } else {
                    Category::Workspace
                }
            }
        })
        .collect()
}

/// Plans the arena of `p` (see the module doc).
pub fn plan_program(p: &Program) -> ProgramArena {
    let (schedule, input) = program_schedule(p);
    let memory = plan_memory(&schedule, &input);
    let offsets: Vec<u64> = (0..p.buffers.len())
        .map(|i| {
            memory
                .arena
                .slots
                .get(&BufKey::Buffer(i as u32))
                .map_or(0, |s| s.offset)
        })
        .collect();
    let phases = step_phases(p);
    let categories = buffer_categories(p, &phases);
    let category = |k: BufKey| match k {
        BufKey::Buffer(i) => categories[i as usize],
        BufKey::Value(_) | BufKey::Extra(_) => Category::Workspace,
    };
    let mut bytes = memory.breakdown_at(memory.peak_time, category);
    bytes.add(
        Category::Workspace,
        memory.arena.total.saturating_sub(memory.live_peak),
    );
    ProgramArena {
        schedule,
        input,
        memory,
        offsets,
        phases,
        categories,
        bytes,
    }
}
