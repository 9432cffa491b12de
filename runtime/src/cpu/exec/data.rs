//! The CPU implementations of the data-movement kernels (`kernel::data`), on 4-byte words.
//!
//! Strided copies walk the window with the innermost contiguous run copied as a slice, split
//! over rayon by the outermost axis when the copy is large; gathers split by rows; scatter-adds
//! stay serial so that collisions sum in a fixed order; the noise of `RandUniform` is the
//! interpreter's counter-based generator, split in fixed chunks (bit-exact at any thread count).

use kiln_compiler::ir::rng;
use kiln_compiler::kernel::data::{index_at, DataError, DataKernel, Window, WordType};
use rayon::prelude::*;

/// Work below this many words runs on the calling thread.
const PAR_WORDS: usize = 1 << 15;

/// The position of run `r` (every coordinate but the last) of a window.
fn run_pos(w: &Window, mut r: usize) -> usize {
    let rank = w.shape.len();
    let mut pos = w.offset;
    for a in (0..rank.saturating_sub(1)).rev() {
        pos += (r % w.shape[a]) * w.strides[a];
        r /= w.shape[a];
    }
    pos
}

/// `out[i] = src[w(i)]`: the innermost axis is copied as a run (a slice copy when contiguous),
/// runs split over rayon when the copy is large.
fn gather_window(w: &Window, src: &[u32], out: &mut [u32]) {
    let n = w.len();
    if n == 0 {
        return;
    }
    let Some(&inner) = w.shape.last() else {
        out[0] = src[w.offset];
        return;
    };
    let istride = w.strides[w.shape.len() - 1];
    let go = |(r, run): (usize, &mut [u32])| {
        let p = run_pos(w, r);
        if istride == 1 {
            run.copy_from_slice(&src[p..p + inner]);
        } else {
            for (j, d) in run.iter_mut().enumerate() {
                *d = src[p + j * istride];
            }
        }
    };
    if n >= PAR_WORDS {
        out[..n].par_chunks_mut(inner).enumerate().for_each(go);
    } else {
        out[..n].chunks_mut(inner).enumerate().for_each(go);
    }
}

/// `out[w(i)] = src[i]` (one part of a pad or concat).
fn scatter_window(w: &Window, src: &[u32], out: &mut [u32]) {
    let n = w.len();
    if n == 0 {
        return;
    }
    let Some(&inner) = w.shape.last() else {
        out[w.offset] = src[0];
        return;
    };
    let istride = w.strides[w.shape.len() - 1];
    for (r, run) in src[..n].chunks(inner).enumerate() {
        let p = run_pos(w, r);
        if istride == 1 {
            out[p..p + inner].copy_from_slice(run);
        } else {
            for (j, s) in run.iter().enumerate() {
                out[p + j * istride] = *s;
            }
        }
    }
}

/// Runs one data kernel. `inputs` and `out` are the step's views; lengths are checked first.
pub fn run(
    k: &DataKernel,
    inputs: &[&[u32]],
    out: &mut [u32],
    seed: u64,
    step: u64,
) -> Result<(), DataError> {
    let lens: Vec<usize> = inputs.iter().map(|i| i.len()).collect();
    kiln_compiler::kernel::data::check(k, &lens, out.len())?;
    match k {
        DataKernel::Copy { src, .. } => gather_window(src, inputs[0], out),
        DataKernel::Assemble { fill, parts, .. } => {
            if let Some(v) = fill {
                out.fill(v.to_bits());
            }
            for (x, w) in inputs.iter().zip(parts) {
                scatter_window(w, x, out);
            }
        }
        DataKernel::Gather {
            n,
            rows,
            width,
            idx,
            ..
        } => {
            let (table, ix) = (inputs[0], inputs[1]);
            for i in 0..*n {
                let r = index_at(ix, *idx, i);
                if r < 0 || r as usize >= *rows {
                    return Err(DataError::Index {
                        kernel: "gather",
                        index: r,
                        rows: *rows,
                    });
                }
            }
            let go = |(i, o): (usize, &mut [u32])| {
                let r = index_at(ix, *idx, i) as usize;
                o.copy_from_slice(&table[r * width..(r + 1) * width]);
            };
            if *width == 0 {
                return Ok(());
            }
            if n * width >= PAR_WORDS {
                out.par_chunks_mut(*width).enumerate().for_each(go);
            } else {
                out.chunks_mut(*width).enumerate().for_each(go);
            }
        }
        DataKernel::ScatterAdd {
            n,
            rows,
            width,
            idx,
        } => {
            let (vals, ix) = (inputs[0], inputs[1]);
            out.fill(0f32.to_bits());
            for i in 0..*n {
                let r = index_at(ix, *idx, i);
                if r < 0 || r as usize >= *rows {
                    return Err(DataError::Index {
                        kernel: "scatter_add",
                        index: r,
                        rows: *rows,
                    });
                }
                let r = r as usize;
                let o = &mut out[r * width..(r + 1) * width];
                for (d, s) in o.iter_mut().zip(&vals[i * width..(i + 1) * width]) {
                    *d = (f32::from_bits(*d) + f32::from_bits(*s)).to_bits();
                }
            }
        }
        DataKernel::Reduce { .. } => {
            // Rare (reductions over middle axes); the reference is fast enough.
            kiln_compiler::kernel::data::eval(k, inputs, out, seed, step)?;
        }
        DataKernel::RandUniform { stream, .. } => {
            let key = rng::stream_key(seed, step, *stream);
            const CHUNK: usize = 1 << 14;
            let go = |(c, o): (usize, &mut [u32])| {
                for (j, w) in o.iter_mut().enumerate() {
                    *w = rng::uniform_f32(key, (c * CHUNK + j) as u64).to_bits();
                }
            };
            if out.len() >= PAR_WORDS {
                out.par_chunks_mut(CHUNK).enumerate().for_each(go);
            } else {
                out.chunks_mut(CHUNK).enumerate().for_each(go);
            }
        }
    }
    Ok(())
}

/// Reads a length operand (`i32` or exact `f32` words) as `usize` (negative → 0).
pub fn lengths(words: &[u32], word: WordType, out: &mut [usize]) {
    for (i, o) in out.iter_mut().enumerate() {
        *o = index_at(words, word, i).max(0) as usize;
    }
}
