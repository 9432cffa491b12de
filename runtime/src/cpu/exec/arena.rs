//! Where every buffer of a program lives in the executor's one arena: the compiler's memory
//! planner decides (`kiln_compiler::plan::arena::plan_program`, the same plan `kiln plan`
//! reports), and this module only converts its byte offsets to the executor's 4-byte words.
//!
//! The planner shares bytes between buffers whose lifetimes do not overlap, and lets a
//! single-pass row kernel write its output over an input that dies at that step (the JIT's
//! aliasing contract); offsets and sizes are multiples of 64 bytes.

use kiln_compiler::plan::arena::{plan_program, ProgramArena, ALIGNMENT};
use kiln_compiler::program::{BufferKind, Program};

/// Words (4 bytes) per alignment unit.
pub const ALIGN_WORDS: usize = (ALIGNMENT / 4) as usize;

// The executor allocates 64-byte lines: whole lines hold the planned bytes exactly.
const _: () = assert!(ALIGNMENT.is_multiple_of(64));

/// Word offsets of every buffer and the arena size.
#[derive(Clone, Debug)]
pub struct ArenaPlan {
    pub offsets: Vec<usize>,
    /// Words to allocate (the planner's total bytes / 4).
    pub words: usize,
    /// Words the temporaries would take without sharing (for reports).
    pub temp_words_unshared: usize,
    /// The planner's plan (byte offsets, lifetimes, categories).
    pub planned: ProgramArena,
}

impl ArenaPlan {
    /// Bytes the planner asks for.
    pub fn planned_bytes(&self) -> u64 {
        self.planned.total()
    }
}

/// Plans the arena of `p` (see the module doc).
pub fn plan_arena(p: &Program) -> ArenaPlan {
    let planned = plan_program(p);
    let offsets = planned.offsets.iter().map(|b| (*b / 4) as usize).collect();
    let temp_words_unshared = p
        .buffers
        .iter()
        .filter(|b| b.kind == BufferKind::Temp)
        .map(|b| b.len.div_ceil(ALIGN_WORDS) * ALIGN_WORDS)
        .sum();
    ArenaPlan {
        offsets,
        words: (planned.total() / 4) as usize,
        temp_words_unshared,
        planned,
    }
}
