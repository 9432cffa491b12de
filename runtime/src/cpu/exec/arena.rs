//! Where every buffer of a program lives in the executor's one arena.
//!
//! This is the simple placeholder the memory planner (`compiler::plan`) will replace: persistent
//! and externally visible buffers (inputs, state, outputs, constants) get their own slots;
//! temporaries get an interval of steps (first write to last read, inclusive) and are packed
//! greedily, largest first, at the lowest offset that overlaps no placed temporary whose interval
//! intersects theirs; a temporary an update reads lives to the end of the step. Everything is
//! aligned to 64 bytes. Keep the policy in [`plan_arena`].

use kiln_compiler::program::{BufferKind, Program};

/// Words (4 bytes) per alignment unit.
pub const ALIGN_WORDS: usize = 16;

/// Word offsets of every buffer and the arena size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArenaPlan {
    pub offsets: Vec<usize>,
    pub words: usize,
    /// Words the temporaries would take without sharing (for reports).
    pub temp_words_unshared: usize,
}

fn align(n: usize) -> usize {
    n.div_ceil(ALIGN_WORDS) * ALIGN_WORDS
}

/// Assigns offsets (see the module doc).
pub fn plan_arena(p: &Program) -> ArenaPlan {
    let nb = p.buffers.len();
    let mut offsets = vec![0usize; nb];
    let mut top = 0usize;
    // Dedicated slots.
    for (i, b) in p.buffers.iter().enumerate() {
        if b.kind != BufferKind::Temp {
            offsets[i] = top;
            top += align(b.len.max(1));
        }
    }
    let base = top;
    // Lifetimes of temporaries, in step indices.
    let mut first = vec![usize::MAX; nb];
    let mut last = vec![0usize; nb];
    for (s, st) in p.steps.iter().enumerate() {
        for v in st.inputs.iter().chain(&st.outputs) {
            let b = v.buf.index();
            first[b] = first[b].min(s);
            last[b] = last[b].max(s);
        }
    }
    // An update's source is read after the last step (when the step commits its state), so a
    // temporary that feeds one lives to the end.
    for u in &p.updates {
        let b = u.view.buf.index();
        if first[b] != usize::MAX {
            last[b] = p.steps.len();
        }
    }
    let mut temps: Vec<usize> = (0..nb)
        .filter(|i| {
            p.buffers[*i].kind == BufferKind::Temp
                && p.buffers[*i].len > 0
                && first[*i] != usize::MAX
        })
        .collect();
    let temp_words_unshared = temps.iter().map(|i| align(p.buffers[*i].len)).sum();
    temps.sort_by(|a, b| p.buffers[*b].len.cmp(&p.buffers[*a].len).then(a.cmp(b)));
    // (offset, size, first, last) of placed temporaries.
    let mut placed: Vec<(usize, usize, usize, usize)> = Vec::with_capacity(temps.len());
    let mut end = 0usize;
    for i in temps {
        let size = align(p.buffers[i].len);
        let mut busy: Vec<(usize, usize)> = placed
            .iter()
            .filter(|(_, _, f, l)| *f <= last[i] && first[i] <= *l)
            .map(|(o, s, _, _)| (*o, *s))
            .collect();
        busy.sort_unstable();
        let mut at = 0usize;
        for (o, s) in busy {
            if o >= at + size {
                break;
            }
            at = at.max(o + s);
        }
        placed.push((at, size, first[i], last[i]));
        offsets[i] = base + at;
        end = end.max(at + size);
    }
    ArenaPlan {
        offsets,
        words: base + end,
        temp_words_unshared,
    }
}
