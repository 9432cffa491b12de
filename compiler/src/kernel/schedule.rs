//! The phase schedule of a row program: which values are computed once per launch, which once per
//! row and in which column pass each per-element value, reduction and store happens.
//!
//! A row reduction can only finish after a full pass over the row's columns, and anything that
//! uses its result needs another pass. The *stage* of a value is the number of such passes that
//! must precede it: a reduction's stage is its operand's plus one, any other value's is the maximum
//! of its operands'. Column pass `p` computes, per element, every per-element value that its roots
//! (the reductions of stage-`p` operands and the stores of stage-`p` values) need; per-element
//! values are recomputed in each pass that needs them instead of being kept in memory, which is
//! cheap for fused elementwise chains and keeps the kernel one-read-per-pass. Dead values are
//! dropped. Both the CPU JIT and the CUDA generator follow this schedule, so it lives here.

use super::row::{Inst, Level, OutputAccess, RowProgram, ValueId};
use super::validate::{validate, Typing, ValidateError};

/// Row-level work followed by (optionally) one column pass.
#[derive(Clone, Debug, PartialEq)]
pub struct Segment {
    /// Row-level values computed before the pass, in body order.
    pub row_values: Vec<ValueId>,
    pub pass: Option<ColumnPass>,
}

/// One loop over the columns of a row.
#[derive(Clone, Debug, PartialEq)]
pub struct ColumnPass {
    /// Element-level values computed per column, in body order.
    pub elem_values: Vec<ValueId>,
    /// `Reduce` instructions whose operand is accumulated in this pass; their results are
    /// available from the next segment on.
    pub reductions: Vec<ValueId>,
    /// Indices of `Full` and `ColSum` outputs written in this pass.
    pub outputs: Vec<usize>,
}

/// The schedule of a validated row program.
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    pub typing: Typing,
    /// Stage of every value (meaningful for live values only).
    pub stage: Vec<u32>,
    /// Whether a value contributes to some output.
    pub live: Vec<bool>,
    /// Kernel-level live values, in body order: computed once per launch.
    pub kernel_values: Vec<ValueId>,
    pub segments: Vec<Segment>,
    /// Indices of `PerRow` and `Sum` outputs, written after the last segment.
    pub row_outputs: Vec<usize>,
}

impl Schedule {
    /// The column passes in order.
    pub fn passes(&self) -> impl Iterator<Item = &ColumnPass> {
        self.segments.iter().filter_map(|s| s.pass.as_ref())
    }

    /// True when the program is a pure map over elements: no reductions, no positions, no
    /// per-row or per-column operands, only `Full` outputs. Such a program gives the same result
    /// however `rows × cols` is reshaped, so backends may split it over flat chunks.
    pub fn is_flat_map(&self, prog: &RowProgram) -> bool {
        use super::row::{IndexKind, InputAccess};
        let inputs_ok = prog
            .inputs
            .iter()
            .all(|i| matches!(i.access, InputAccess::Full | InputAccess::Scalar));
        let outputs_ok = prog.outputs.iter().all(|o| o.access == OutputAccess::Full);
        let body_ok = prog.body.iter().enumerate().all(|(i, inst)| {
            !self.live[i]
                || !matches!(
                    inst,
                    Inst::Reduce(..)
                        | Inst::Index(
                            IndexKind::Row | IndexKind::Col | IndexKind::Rows | IndexKind::Cols
                        )
                )
        });
        inputs_ok && outputs_ok && body_ok
    }
}

/// Validates `prog` and computes its schedule.
pub fn schedule(prog: &RowProgram) -> Result<Schedule, ValidateError> {
    let typing = validate(prog)?;
    let n = prog.body.len();

    let mut live = vec![false; n];
    for out in &prog.outputs {
        live[out.value.index()] = true;
    }
    for i in (0..n).rev() {
        if live[i] {
            for op in prog.body[i].operands() {
                live[op.index()] = true;
            }
        }
    }

    let mut stage = vec![0u32; n];
    for (i, inst) in prog.body.iter().enumerate() {
        let operand_max = inst
            .operands()
            .iter()
            .map(|v| stage[v.index()])
            .max()
            .unwrap_or(0);
        stage[i] = match inst {
            Inst::Reduce(_, _) => operand_max + 1,
            _ => operand_max,
        };
    }

    let level = |v: ValueId| typing.level[v.index()];
    let mut kernel_values = vec![];
    let mut row_by_stage: Vec<Vec<ValueId>> = vec![];
    let mut roots_by_pass: Vec<(Vec<ValueId>, Vec<usize>)> = vec![];
    fn grow<T: Default>(v: &mut Vec<T>, len: usize) {
        while v.len() < len {
            v.push(T::default());
        }
    }
    for i in 0..n {
        if !live[i] {
            continue;
        }
        let v = ValueId(i as u32);
        match level(v) {
            Level::Kernel => kernel_values.push(v),
            Level::Row => {
                let s = stage[i] as usize;
                grow(&mut row_by_stage, s + 1);
                row_by_stage[s].push(v);
            }
            Level::Elem => {}
        }
        if let Inst::Reduce(_, a) = prog.body[i] {
            let p = stage[a.index()] as usize;
            grow(&mut roots_by_pass, p + 1);
            roots_by_pass[p].0.push(v);
        }
    }
    let mut row_outputs = vec![];
    for (o, out) in prog.outputs.iter().enumerate() {
        match out.access {
            OutputAccess::Full | OutputAccess::ColSum => {
                let p = stage[out.value.index()] as usize;
                grow(&mut roots_by_pass, p + 1);
                roots_by_pass[p].1.push(o);
            }
            OutputAccess::PerRow | OutputAccess::Sum => row_outputs.push(o),
        }
    }

    let n_segments = row_by_stage.len().max(roots_by_pass.len());
    grow(&mut row_by_stage, n_segments);
    grow(&mut roots_by_pass, n_segments);
    let mut segments = Vec::with_capacity(n_segments);
    for (row_values, (reductions, outputs)) in row_by_stage.into_iter().zip(roots_by_pass) {
        let pass = if reductions.is_empty() && outputs.is_empty() {
            None
        } else {
            let mut need = vec![false; n];
            let mut stack: Vec<ValueId> = reductions
                .iter()
                .filter_map(|&r| match prog.body[r.index()] {
                    Inst::Reduce(_, a) => Some(a),
                    _ => None,
                })
                .chain(outputs.iter().map(|&o| prog.outputs[o].value))
                .filter(|&v| level(v) == Level::Elem)
                .collect();
            while let Some(v) = stack.pop() {
                if need[v.index()] {
                    continue;
                }
                need[v.index()] = true;
                for op in prog.body[v.index()].operands() {
                    if level(op) == Level::Elem {
                        stack.push(op);
                    }
                }
            }
            let elem_values = (0..n)
                .filter(|&i| need[i])
                .map(|i| ValueId(i as u32))
                .collect();
            Some(ColumnPass {
                elem_values,
                reductions,
                outputs,
            })
        };
        segments.push(Segment { row_values, pass });
    }

    Ok(Schedule {
        typing,
        stage,
        live,
        kernel_values,
        segments,
        row_outputs,
    })
}
