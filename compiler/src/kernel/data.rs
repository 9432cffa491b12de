//! Data-movement kernels: the layout and indexing work that is neither a row program, a GEMM nor
//! attention — permutes, strided slices and general broadcasts (one strided copy), pads and
//! concatenations (windows written into a filled output), embedding lookups and their gradient,
//! reductions over non-trailing axes, and the dropout noise of `RandUniform`.
//!
//! Buffers are arrays of 4-byte words (`f32` or `i32`): copies move words whatever their type, so
//! one kernel serves both. Indices (`Gather`, `ScatterAdd`) may be stored as `i32` or as exact
//! integral `f32` (row programs only write `f32`). Sizes are concrete; nothing here names a
//! backend, a thread or an address. [`eval`] is the plain reference every backend is tested
//! against.

use std::fmt;

use crate::ir::rng;

/// Element type of a buffer (4 bytes either way).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WordType {
    F32,
    I32,
}

impl fmt::Display for WordType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WordType::F32 => "f32",
            WordType::I32 => "i32",
        })
    }
}

/// A strided window: element `i` of a dense row-major `shape` sits at
/// `offset + Σ_a coord_a(i) · strides[a]` in the other buffer.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Window {
    pub shape: Vec<usize>,
    pub strides: Vec<usize>,
    pub offset: usize,
}

impl Window {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The largest position the window touches, plus one (0 when empty).
    pub fn extent(&self) -> usize {
        if self.is_empty() {
            return 0;
        }
        self.offset
            + self
                .shape
                .iter()
                .zip(&self.strides)
                .map(|(d, s)| (d - 1) * s)
                .sum::<usize>()
            + 1
    }
    /// Calls `f(i, position)` for every element in row-major order.
    pub fn for_each(&self, mut f: impl FnMut(usize, usize)) {
        let n = self.len();
        if n == 0 {
            return;
        }
        let rank = self.shape.len();
        let mut coord = vec![0usize; rank];
        let mut pos = self.offset;
        for i in 0..n {
            f(i, pos);
            for a in (0..rank).rev() {
                coord[a] += 1;
                pos += self.strides[a];
                if coord[a] < self.shape[a] {
                    break;
                }
                pos -= self.strides[a] * self.shape[a];
                coord[a] = 0;
            }
        }
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}@{}{:?}", self.shape, self.offset, self.strides)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReduceKind {
    Sum,
    Max,
}

/// One data-movement kernel. Inputs and outputs are listed per variant; every output is
/// overwritten entirely.
#[derive(Clone, Debug, PartialEq)]
pub enum DataKernel {
    /// `out[i] = in[src(i)]` over the window's shape (permute: permuted strides; slice: offset and
    /// scaled strides; broadcast: stride 0). Input: the source; output: dense `shape`.
    Copy { src: Window, word: WordType },
    /// `out[..] = fill` (when given), then input `p` is written densely into window `parts[p]`
    /// of the output (pad: one part; concat: one part per operand). Output length `len`.
    Assemble {
        len: usize,
        fill: Option<f32>,
        parts: Vec<Window>,
        word: WordType,
    },
    /// `out[i, :] = table[idx[i], :]`: inputs `table [rows, width]`, `idx [n]`; output
    /// `[n, width]`. An index outside `0..rows` is an error of the launch.
    Gather {
        n: usize,
        rows: usize,
        width: usize,
        idx: WordType,
        word: WordType,
    },
    /// `out = 0; out[idx[i], :] += values[i, :]`: inputs `values [n, width]`, `idx [n]`; output
    /// `[rows, width]` (f32). Collisions are summed in increasing `i`.
    ScatterAdd {
        n: usize,
        rows: usize,
        width: usize,
        idx: WordType,
    },
    /// Sum or max over `axes` of a dense f32 `shape` (any axes; trailing-axis and leading-axis
    /// reductions usually live in row programs instead). Output: the kept axes, dense.
    Reduce {
        shape: Vec<usize>,
        axes: Vec<usize>,
        op: ReduceKind,
    },
    /// `out[i] = ir::rng::uniform_f32(stream_key(seed, step, stream), i)` for `i < len`, with the
    /// run's seed and step (bit-exact with the interpreter). No inputs.
    RandUniform { len: usize, stream: u64 },
}

impl DataKernel {
    /// Number of inputs the kernel reads.
    pub fn input_count(&self) -> usize {
        match self {
            DataKernel::Copy { .. } | DataKernel::Reduce { .. } => 1,
            DataKernel::Assemble { parts, .. } => parts.len(),
            DataKernel::Gather { .. } | DataKernel::ScatterAdd { .. } => 2,
            DataKernel::RandUniform { .. } => 0,
        }
    }

    /// The output length in elements.
    pub fn output_len(&self) -> usize {
        match self {
            DataKernel::Copy { src, .. } => src.len(),
            DataKernel::Assemble { len, .. } => *len,
            DataKernel::Gather { n, width, .. } => n * width,
            DataKernel::ScatterAdd { rows, width, .. } => rows * width,
            DataKernel::Reduce { shape, axes, .. } => shape
                .iter()
                .enumerate()
                .filter(|(a, _)| !axes.contains(a))
                .map(|(_, d)| *d)
                .product(),
            DataKernel::RandUniform { len, .. } => *len,
        }
    }

    /// The input lengths the kernel needs (at least; windows may point into a larger buffer).
    pub fn input_lens(&self) -> Vec<usize> {
        match self {
            DataKernel::Copy { src, .. } => vec![src.extent()],
            DataKernel::Assemble { parts, .. } => parts.iter().map(Window::len).collect(),
            DataKernel::Gather { n, rows, width, .. } => vec![rows * width, *n],
            DataKernel::ScatterAdd { n, width, .. } => vec![n * width, *n],
            DataKernel::Reduce { shape, .. } => vec![shape.iter().product()],
            DataKernel::RandUniform { .. } => vec![],
        }
    }

    /// Word type of the output.
    pub fn output_word(&self) -> WordType {
        match self {
            DataKernel::Copy { word, .. }
            | DataKernel::Assemble { word, .. }
            | DataKernel::Gather { word, .. } => *word,
            DataKernel::ScatterAdd { .. }
            | DataKernel::Reduce { .. }
            | DataKernel::RandUniform { .. } => WordType::F32,
        }
    }

    /// Short kind name for profiles and listings.
    pub fn kind(&self) -> &'static str {
        match self {
            DataKernel::Copy { .. } => "copy",
            DataKernel::Assemble { .. } => "assemble",
            DataKernel::Gather { .. } => "gather",
            DataKernel::ScatterAdd { .. } => "scatter_add",
            DataKernel::Reduce { .. } => "reduce",
            DataKernel::RandUniform { .. } => "rand_uniform",
        }
    }
}

impl fmt::Display for DataKernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DataKernel::Copy { src, word } => write!(f, "copy.{word} {src}"),
            DataKernel::Assemble {
                len,
                fill,
                parts,
                word,
            } => {
                write!(f, "assemble.{word} len={len}")?;
                if let Some(v) = fill {
                    write!(f, " fill={}", super::print::f32_literal(*v))?;
                }
                for p in parts {
                    write!(f, " {p}")?;
                }
                Ok(())
            }
            DataKernel::Gather {
                n,
                rows,
                width,
                idx,
                word,
            } => write!(f, "gather.{word} n={n} rows={rows} width={width} idx={idx}"),
            DataKernel::ScatterAdd {
                n,
                rows,
                width,
                idx,
            } => write!(f, "scatter_add n={n} rows={rows} width={width} idx={idx}"),
            DataKernel::Reduce { shape, axes, op } => write!(
                f,
                "reduce.{} shape={shape:?} axes={axes:?}",
                match op {
                    ReduceKind::Sum => "sum",
                    ReduceKind::Max => "max",
                }
            ),
            DataKernel::RandUniform { len, stream } => {
                write!(f, "rand_uniform len={len} stream={stream}")
            }
        }
    }
}

/// Why a data kernel launch failed.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum DataError {
    #[error("{kernel}: expected {expected} inputs, got {got}")]
    Inputs {
        kernel: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("{kernel}: buffer {what} holds {got} elements, needs {need}")]
    Length {
        kernel: &'static str,
        what: String,
        got: usize,
        need: usize,
    },
    #[error("{kernel}: index {index} out of range 0..{rows}")]
    Index {
        kernel: &'static str,
        index: i64,
        rows: usize,
    },
}

/// Reads index `i` of an index buffer stored as `word` (f32 indices are exact integers).
pub fn index_at(words: &[u32], word: WordType, i: usize) -> i64 {
    match word {
        WordType::I32 => words[i] as i32 as i64,
        WordType::F32 => f32::from_bits(words[i]) as i64,
    }
}

/// Checks input and output lengths of a launch.
pub fn check(k: &DataKernel, inputs: &[usize], output: usize) -> Result<(), DataError> {
    let kernel = k.kind();
    if inputs.len() != k.input_count() {
        return Err(DataError::Inputs {
            kernel,
            expected: k.input_count(),
            got: inputs.len(),
        });
    }
    for (i, (got, need)) in inputs.iter().zip(k.input_lens()).enumerate() {
        if *got < need {
            return Err(DataError::Length {
                kernel,
                what: format!("input {i}"),
                got: *got,
                need,
            });
        }
    }
    if output != k.output_len() {
        return Err(DataError::Length {
            kernel,
            what: "output".into(),
            got: output,
            need: k.output_len(),
        });
    }
    if let DataKernel::Assemble { parts, len, .. } = k {
        for p in parts {
            if p.extent() > *len {
                return Err(DataError::Length {
                    kernel,
                    what: format!("window {p}"),
                    got: *len,
                    need: p.extent(),
                });
            }
        }
    }
    Ok(())
}

/// The reference implementation on 4-byte words (f32 data as bits). `seed` and `step` are the
/// run's, for `RandUniform`.
pub fn eval(
    k: &DataKernel,
    inputs: &[&[u32]],
    out: &mut [u32],
    seed: u64,
    step: u64,
) -> Result<(), DataError> {
    let lens: Vec<usize> = inputs.iter().map(|i| i.len()).collect();
    check(k, &lens, out.len())?;
    let f = |w: u32| f32::from_bits(w);
    match k {
        DataKernel::Copy { src, .. } => {
            let x = inputs[0];
            src.for_each(|i, p| out[i] = x[p]);
        }
        DataKernel::Assemble { fill, parts, .. } => {
            if let Some(v) = fill {
                out.fill(v.to_bits());
            }
            for (x, w) in inputs.iter().zip(parts) {
                w.for_each(|i, p| out[p] = x[i]);
            }
        }
        DataKernel::Gather {
            n,
            rows,
            width,
            idx,
            ..
        } => {
            for i in 0..*n {
                let r = index_at(inputs[1], *idx, i);
                if r < 0 || r as usize >= *rows {
                    return Err(DataError::Index {
                        kernel: "gather",
                        index: r,
                        rows: *rows,
                    });
                }
                let r = r as usize;
                out[i * width..(i + 1) * width]
                    .copy_from_slice(&inputs[0][r * width..(r + 1) * width]);
            }
        }
        DataKernel::ScatterAdd {
            n,
            rows,
            width,
            idx,
        } => {
            out.fill(0f32.to_bits());
            for i in 0..*n {
                let r = index_at(inputs[1], *idx, i);
                if r < 0 || r as usize >= *rows {
                    return Err(DataError::Index {
                        kernel: "scatter_add",
                        index: r,
                        rows: *rows,
                    });
                }
                let r = r as usize;
                for c in 0..*width {
                    let o = &mut out[r * width + c];
                    *o = (f(*o) + f(inputs[0][i * width + c])).to_bits();
                }
            }
        }
        DataKernel::Reduce { shape, axes, op } => {
            let init = match op {
                ReduceKind::Sum => 0.0f32,
                ReduceKind::Max => f32::NEG_INFINITY,
            };
            out.fill(init.to_bits());
            let kept_shape: Vec<usize> = shape
                .iter()
                .enumerate()
                .filter(|(a, _)| !axes.contains(a))
                .map(|(_, d)| *d)
                .collect();
            // Output position of every input element: the window over the input shape whose
            // strides are the kept axes' output strides (0 on reduced axes).
            let mut ostr = vec![0usize; shape.len()];
            let mut s = 1;
            for a in (0..shape.len()).rev() {
                if !axes.contains(&a) {
                    ostr[a] = s;
                    s *= shape[a];
                }
            }
            debug_assert_eq!(s, kept_shape.iter().product::<usize>());
            let w = Window {
                shape: shape.clone(),
                strides: ostr,
                offset: 0,
            };
            let x = inputs[0];
            w.for_each(|i, p| {
                let (a, b) = (f(out[p]), f(x[i]));
                out[p] = match op {
                    ReduceKind::Sum => a + b,
                    ReduceKind::Max => {
                        if b > a || b.is_nan() {
                            b
                        } else {
                            a
                        }
                    }
                }
                .to_bits();
            });
        }
        DataKernel::RandUniform { stream, .. } => {
            let key = rng::stream_key(seed, step, *stream);
            for (i, o) in out.iter_mut().enumerate() {
                *o = rng::uniform_f32(key, i as u64).to_bits();
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(x: &[f32]) -> Vec<u32> {
        x.iter().map(|v| v.to_bits()).collect()
    }

    #[test]
    fn copy_transposes_and_broadcasts() {
        let x = words(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let mut out = vec![0u32; 6];
        let k = DataKernel::Copy {
            src: Window {
                shape: vec![3, 2],
                strides: vec![1, 3],
                offset: 0,
            },
            word: WordType::F32,
        };
        eval(&k, &[&x], &mut out, 0, 0).unwrap();
        assert_eq!(out, words(&[1.0, 4.0, 2.0, 5.0, 3.0, 6.0]));
        let k = DataKernel::Copy {
            src: Window {
                shape: vec![2, 3],
                strides: vec![0, 1],
                offset: 3,
            },
            word: WordType::F32,
        };
        eval(&k, &[&x], &mut out, 0, 0).unwrap();
        assert_eq!(out, words(&[4.0, 5.0, 6.0, 4.0, 5.0, 6.0]));
    }

    #[test]
    fn assemble_pads_and_reduce_sums_middle_axis() {
        let x = words(&[1.0, 2.0]);
        let mut out = vec![0u32; 4];
        let k = DataKernel::Assemble {
            len: 4,
            fill: Some(0.0),
            parts: vec![Window {
                shape: vec![2],
                strides: vec![1],
                offset: 1,
            }],
            word: WordType::F32,
        };
        eval(&k, &[&x], &mut out, 0, 0).unwrap();
        assert_eq!(out, words(&[0.0, 1.0, 2.0, 0.0]));
        let y = words(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]);
        let k = DataKernel::Reduce {
            shape: vec![2, 2, 2],
            axes: vec![1],
            op: ReduceKind::Sum,
        };
        let mut out = vec![0u32; 4];
        eval(&k, &[&y], &mut out, 0, 0).unwrap();
        assert_eq!(out, words(&[4.0, 6.0, 12.0, 14.0]));
    }

    #[test]
    fn gather_rejects_out_of_range() {
        let t = words(&[1.0, 2.0]);
        let idx = vec![5u32];
        let mut out = vec![0u32; 1];
        let k = DataKernel::Gather {
            n: 1,
            rows: 2,
            width: 1,
            idx: WordType::I32,
            word: WordType::F32,
        };
        assert!(eval(&k, &[&t, &idx], &mut out, 0, 0).is_err());
    }
}
