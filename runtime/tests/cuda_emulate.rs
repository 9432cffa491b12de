//! Runs the generated CUDA C on the host, without a GPU: each source is compiled with the host
//! C++ compiler against a small shim that emulates the CUDA execution model (every thread of a
//! block is an OS thread; `__syncthreads` is a block barrier; `__shfl_xor_sync` exchanges through
//! memory between two warp barriers; blocks run one after another; shared memory is static), and
//! the launches planned by `cuda::exec` (`plan_row`, `plan_attention_*`) are executed exactly as
//! the device would receive them.
//!
//! What this verifies: the code generator's logic (schedule, per-thread column loops, block
//! reductions, deterministic partial sums, bf16 storage, bit-exact `rand_uniform`), the attention
//! kernel's tiling, masking, online softmax and backward, the data kernels, and the launch
//! plans — against the reference evaluator and the CPU attention kernel. What it cannot verify:
//! CUDA's own math library accuracy, real warp scheduling, memory-model subtleties beyond
//! barriers, and performance. Those need `scripts/gpu-check.sh` on a GPU.
//!
//! Skipped (with a printed line) when no C++ compiler is found (`c++`, or `CXX`).
#![cfg(feature = "cuda")]

use std::ffi::c_void;
use std::process::Command;

use kiln_compiler::kernel::{
    evaluate, library, AttentionKernel, AttentionLayout, AttentionMask, BufferRef, DType,
    Direction, HeadLayout, InputAccess, OutputAccess, RowProgram,
};
use kiln_runtime::cpu::attention as cpu_attn;
use kiln_runtime::cuda::codegen::{self, RowLayout};
use kiln_runtime::cuda::device::Arg;
use kiln_runtime::cuda::exec::{
    self, plan_attention_backward, plan_attention_forward, plan_row, AttentionGradPtrs,
    AttentionPtrs, Launch,
};
use kiln_runtime::cuda::nvrtc::Source;
use kiln_runtime::cuda::{attention, bf16_to_f32, catalog, data, f32_to_bf16, Storage};

const SHIM: &str = r#"
#include <barrier>
#include <cmath>
#include <cstring>
#include <memory>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(x)
struct kiln_dim3 { unsigned x, y, z; };
static thread_local kiln_dim3 threadIdx;
static kiln_dim3 blockIdx, blockDim, gridDim;
static std::barrier<>* kiln_emu_block;
static std::vector<std::unique_ptr<std::barrier<>>> kiln_emu_warps;
static float kiln_emu_shfl[1024];
alignas(16) static float kiln_emu_smem[65536];
inline void __syncthreads() { kiln_emu_block->arrive_and_wait(); }
inline float __shfl_xor_sync(unsigned, float v, int o) {
    const unsigned t = threadIdx.x;
    kiln_emu_shfl[t] = v;
    kiln_emu_warps[t / 32]->arrive_and_wait();
    const float r = kiln_emu_shfl[t ^ (unsigned)o];
    kiln_emu_warps[t / 32]->arrive_and_wait();
    return r;
}
inline float __int_as_float(int x) { float f; std::memcpy(&f, &x, 4); return f; }
inline float __uint_as_float(unsigned x) { float f; std::memcpy(&f, &x, 4); return f; }
inline unsigned __float_as_uint(float f) { unsigned x; std::memcpy(&x, &f, 4); return x; }
inline float __int2float_rn(int x) { return (float)x; }
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
template <class F> void kiln_emu_run(unsigned gx, unsigned gy, unsigned bx, F f) {
    gridDim = {gx, gy, 1};
    blockDim = {bx, 1, 1};
    for (unsigned y = 0; y < gy; ++y)
        for (unsigned x = 0; x < gx; ++x) {
            blockIdx = {x, y, 0};
            std::barrier<> block(bx);
            kiln_emu_block = &block;
            kiln_emu_warps.clear();
            for (unsigned w = 0; w < bx / 32; ++w) kiln_emu_warps.push_back(std::make_unique<std::barrier<>>(32));
            std::vector<std::thread> ts;
            for (unsigned t = 0; t < bx; ++t) ts.emplace_back([&, t] { threadIdx = {t, 0, 0}; f(); });
            for (auto& t : ts) t.join();
        }
}
template <class T> T kiln_emu_arg(void* p) {
    if constexpr (std::is_pointer_v<T>) return (T)p; else return *(T*)p;
}
template <class... P, std::size_t... I>
void kiln_emu_invoke(void (*f)(P...), void** a, std::index_sequence<I...>) { f(kiln_emu_arg<P>(a[I])...); }
template <class... P> void kiln_emu_call(void (*f)(P...), void** a, unsigned gx, unsigned gy, unsigned bx) {
    kiln_emu_run(gx, gy, bx, [&] { kiln_emu_invoke(f, a, std::index_sequence_for<P...>{}); });
}
"#;

fn cxx() -> Option<String> {
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    Command::new(&cxx)
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|_| cxx)
}

/// A host-compiled emulation of one or more CUDA modules.
struct Emu {
    lib: libloading::Library,
    _dir: tempfile::TempDir,
}

type Wrapper = unsafe extern "C" fn(*mut *mut c_void, u32, u32, u32);

/// Adapts CUDA C to the shim: `extern __shared__` becomes the static smem block, other
/// `__shared__` arrays become function statics (blocks run one at a time).
fn adapt(code: &str) -> String {
    code.replace(
        "extern __shared__ float kiln_smem[];",
        "float* kiln_smem = kiln_emu_smem;",
    )
    .replace("__shared__", "static")
}

impl Emu {
    /// Compiles modules, each in its own namespace `m<i>` (so each may carry its own prelude),
    /// with a wrapper `emu_<i>_<entry>` per entry point. Modules that define macros must be
    /// compiled alone.
    fn build(cxx: &str, modules: &[&Source]) -> Emu {
        let mut tu = String::from(SHIM);
        let mut wrappers = String::new();
        for (i, m) in modules.iter().enumerate() {
            tu.push_str(&format!("namespace m{i} {{\n"));
            tu.push_str(&adapt(&m.code).replace("extern \"C\" ", ""));
            tu.push_str("\n}\n");
            for k in &m.kernels {
                wrappers.push_str(&format!(
                    "extern \"C\" void emu_{i}_{k}(void** a, unsigned gx, unsigned gy, unsigned bx) {{ kiln_emu_call(&m{i}::{k}, a, gx, gy, bx); }}\n"
                ));
            }
        }
        tu.push_str(&wrappers);
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("emu.cpp");
        let so = dir.path().join("emu.so");
        std::fs::write(&src, &tu).unwrap();
        let out = Command::new(cxx)
            .args([
                "-std=c++20",
                "-O1",
                "-shared",
                "-fPIC",
                "-pthread",
                "-w",
                "-o",
            ])
            .arg(&so)
            .arg(&src)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "host compile of the emulated CUDA failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // SAFETY: the library is the code just compiled; its initialisers only set up statics.
        let lib = unsafe { libloading::Library::new(&so) }.unwrap();
        Emu { lib, _dir: dir }
    }

    /// Runs one planned launch of module `i`'s entry point.
    fn launch(&self, i: usize, l: &Launch) {
        assert_eq!(l.grid.2, 1);
        assert_eq!((l.block.1, l.block.2), (1, 1));
        assert!(
            l.block.0.is_multiple_of(32) && l.block.0 <= 1024,
            "block {:?}",
            l.block
        );
        assert!(l.smem as usize <= 65536 * 4, "smem {}", l.smem);
        let mut slots: Vec<[u8; 8]> = vec![[0; 8]; l.args.len()];
        let mut ptrs: Vec<*mut c_void> = vec![];
        for (a, s) in l.args.iter().zip(slots.iter_mut()) {
            match *a {
                Arg::Ptr(p) => ptrs.push(p as *mut c_void),
                Arg::I32(x) => {
                    s[..4].copy_from_slice(&x.to_ne_bytes());
                    ptrs.push(s.as_mut_ptr() as *mut c_void);
                }
                Arg::I64(x) => {
                    s.copy_from_slice(&x.to_ne_bytes());
                    ptrs.push(s.as_mut_ptr() as *mut c_void);
                }
                Arg::F32(x) => {
                    s[..4].copy_from_slice(&x.to_ne_bytes());
                    ptrs.push(s.as_mut_ptr() as *mut c_void);
                }
            }
        }
        let name = format!("emu_{i}_{}", l.entry);
        // SAFETY: the wrapper was generated for this entry point with the shim's signature.
        let f: libloading::Symbol<Wrapper> = unsafe { self.lib.get(name.as_bytes()) }.unwrap();
        // SAFETY: arguments follow the kernel's parameter list (the launch plan); the host
        // buffers behind the pointers are alive and sized for the launch (the caller's).
        unsafe { f(ptrs.as_mut_ptr(), l.grid.0, l.grid.1, l.block.0) };
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) as u32
    }
    fn uniform(&mut self) -> f32 {
        (self.next() >> 8) as f32 / 16_777_216.0
    }
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|_| ((0..4).map(|_| self.uniform()).sum::<f32>() - 2.0) * scale)
            .collect()
    }
}

fn round_bf16(x: &[f32]) -> Vec<f32> {
    x.iter().map(|&v| bf16_to_f32(f32_to_bf16(v))).collect()
}

fn error_ratio(got: &[f32], want: &[f32], atol: f32, rtol: f32) -> f32 {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .map(|(&g, &w)| {
            if g == w || g.is_nan() && w.is_nan() {
                0.0
            } else {
                let r = (g - w).abs() / (atol + rtol * w.abs());
                if r.is_nan() {
                    f32::INFINITY
                } else {
                    r
                }
            }
        })
        .fold(0.0, f32::max)
}

/// Host memory standing in for device memory: f32 buffers, or bf16 bits, or i32.
enum Buf {
    F(Vec<f32>),
    H(Vec<u16>),
    I(Vec<i32>),
}

impl Buf {
    fn ptr(&mut self) -> u64 {
        match self {
            Buf::F(v) => v.as_mut_ptr() as u64,
            Buf::H(v) => v.as_mut_ptr() as u64,
            Buf::I(v) => v.as_mut_ptr() as u64,
        }
    }
    fn f32s(&self) -> Vec<f32> {
        match self {
            Buf::F(v) => v.clone(),
            Buf::H(v) => v.iter().map(|&h| bf16_to_f32(h)).collect(),
            Buf::I(v) => v.iter().map(|&i| i as f32).collect(),
        }
    }
    fn stored(v: &[f32], s: Storage) -> Buf {
        match s {
            Storage::F32 => Buf::F(v.to_vec()),
            Storage::Bf16 => Buf::H(v.iter().map(|&x| f32_to_bf16(x)).collect()),
        }
    }
}

/// Random inputs for a library program (as the GPU conformance test draws them).
fn inputs_for(
    prog: &RowProgram,
    rows: usize,
    cols: usize,
    rng: &mut Rng,
) -> Vec<(Vec<f32>, Vec<i32>)> {
    prog.inputs
        .iter()
        .map(|decl| {
            let n = decl.access.len(rows, cols).unwrap();
            match (decl.dtype, decl.access) {
                (DType::I32, InputAccess::PerRow) => (
                    vec![],
                    (0..n)
                        .map(|_| (rng.next() % (cols as u32 + 1)) as i32 - 1)
                        .collect(),
                ),
                (DType::I32, _) => (
                    vec![],
                    (0..n)
                        .map(|_| 1 + (rng.next() % cols.max(1) as u32) as i32)
                        .collect(),
                ),
                (DType::F32, InputAccess::Scalar) => {
                    ((0..n).map(|_| 0.05 + 0.9 * rng.uniform()).collect(), vec![])
                }
                (DType::F32, _) => {
                    let mut v = rng.vec(n, 1.0);
                    if matches!(decl.name.as_str(), "v" | "rstd" | "rrms") {
                        v.iter_mut().for_each(|x| *x = x.abs() + 0.1);
                    }
                    (v, vec![])
                }
            }
        })
        .collect()
}

#[test]
fn row_kernels_match_the_reference_evaluator() {
    let Some(cxx) = cxx() else {
        println!("row_kernels_match_the_reference_evaluator: skipped: no C++ compiler (set CXX)");
        return;
    };
    let kernels: Vec<_> = catalog::row_kernels()
        .into_iter()
        .map(|(p, l)| codegen::generate(&p, &l).unwrap())
        .collect();
    let data_src = data::source();
    let sources: Vec<&Source> = kernels.iter().map(|k| &k.source).collect();
    let row_emu = Emu::build(&cxx, &sources);
    let data_emu = Emu::build(&cxx, &[&data_src]);
    let mut rng = Rng(11);
    let max_grid = 3; // small, so flat kernels' grid-stride loops wrap
    for (i, k) in kernels.iter().enumerate() {
        let prog = &k.program;
        let layout = &k.layout;
        // (rows, cols): one element; more rows than MAX_PARTS would need is not testable here
        // (threads), but rows > grid exercises the grid-stride row loop of reducing kernels via
        // parts = rows; wide rows exercise several columns per thread.
        for &(rows, cols) in &[(1, 1), (3, 37), (9, 5), (2, 300), (0, 4)] {
            let host = inputs_for(prog, rows, cols, &mut rng);
            // bf16 inputs: the reference sees the rounded values.
            let host: Vec<(Vec<f32>, Vec<i32>)> = host
                .into_iter()
                .zip(&layout.inputs)
                .map(|((f, i), s)| {
                    if *s == Storage::Bf16 {
                        (round_bf16(&f), i)
                    } else {
                        (f, i)
                    }
                })
                .collect();
            let refs: Vec<BufferRef> = host
                .iter()
                .zip(&prog.inputs)
                .map(|((f, i), d)| match d.dtype {
                    DType::F32 => BufferRef::F32(f),
                    DType::I32 => BufferRef::I32(i),
                })
                .collect();
            let want: Vec<Vec<f64>> = evaluate::<f64>(prog, &refs, rows, cols).unwrap();
            let mut ins: Vec<Buf> = host
                .iter()
                .zip(prog.inputs.iter().zip(&layout.inputs))
                .map(|((f, iv), (d, s))| match d.dtype {
                    DType::F32 => Buf::stored(f, *s),
                    DType::I32 => Buf::I(iv.clone()),
                })
                .collect();
            let mut outs: Vec<Buf> = prog
                .outputs
                .iter()
                .zip(&layout.outputs)
                .map(|(o, s)| {
                    // Poison: every element must be written.
                    Buf::stored(&vec![f32::NAN; o.access.len(rows, cols).unwrap()], *s)
                })
                .collect();
            let mut scratch = vec![f32::NAN; exec::partial_floats(k, rows, cols, max_grid).max(1)];
            let in_p: Vec<u64> = ins.iter_mut().map(|b| b.ptr()).collect();
            let out_p: Vec<u64> = outs.iter_mut().map(|b| b.ptr()).collect();
            let plan = plan_row(
                k,
                &in_p,
                &out_p,
                rows,
                cols,
                scratch.as_mut_ptr() as u64,
                max_grid,
            )
            .unwrap();
            for l in &plan {
                match l.module {
                    exec::ModuleKind::Row => row_emu.launch(i, l),
                    exec::ModuleKind::Data => data_emu.launch(0, l),
                    exec::ModuleKind::Attention => unreachable!(),
                }
            }
            for (o, decl) in prog.outputs.iter().enumerate() {
                let got = outs[o].f32s();
                let mut want_o: Vec<f32> = want[o].iter().map(|&x| x as f32).collect();
                let (atol, rtol) = if layout.outputs[o] == Storage::Bf16 {
                    want_o = round_bf16(&want_o);
                    (1e-6, 1.0 / 128.0)
                } else {
                    match decl.access {
                        OutputAccess::ColSum | OutputAccess::Sum => (1e-4, 1e-4),
                        _ => (1e-5, 1e-5),
                    }
                };
                let r = error_ratio(&got, &want_o, atol, rtol);
                assert!(
                    r <= 1.0,
                    "{} ({:?}) output `{}` at {rows}x{cols}: error ratio {r}\n got {:?}\nwant {:?}",
                    prog.name,
                    layout.outputs,
                    decl.name,
                    &got[..got.len().min(8)],
                    &want_o[..want_o.len().min(8)]
                );
            }
        }
    }
}

#[test]
fn dropout_masks_are_bit_exact() {
    let Some(cxx) = cxx() else {
        println!("dropout_masks_are_bit_exact: skipped: no C++ compiler (set CXX)");
        return;
    };
    // A flat map (dropout) and a row kernel using rand_uniform through the row path.
    let flat = library::dropout_fwd(3);
    let k = codegen::generate(&flat, &RowLayout::f32(&flat)).unwrap();
    assert!(k.flat);
    let emu = Emu::build(&cxx, &[&k.source]);
    let (rows, cols) = (7, 45);
    let x = vec![1.0f32; rows * cols];
    let (mut p, mut seed, mut step) = (vec![0.4f32], vec![-12345i32], vec![77i32]);
    let mut y = vec![f32::NAN; rows * cols];
    let plan = plan_row(
        &k,
        &[
            x.as_ptr() as u64,
            p.as_mut_ptr() as u64,
            seed.as_mut_ptr() as u64,
            step.as_mut_ptr() as u64,
        ],
        &[y.as_mut_ptr() as u64],
        rows,
        cols,
        0,
        2,
    )
    .unwrap();
    for l in &plan {
        emu.launch(0, l);
    }
    for r in 0..rows {
        for c in 0..cols {
            let u = kiln_compiler::kernel::rng::rand_uniform(
                seed[0] as u32,
                step[0] as u32,
                3,
                kiln_compiler::kernel::rng::flat_index(r, c, cols),
            );
            let want = if u >= 0.4 { 1.0 / (1.0 - 0.4f32) } else { 0.0 };
            assert_eq!(y[r * cols + c].to_bits(), want.to_bits(), "({r}, {c})");
        }
    }
}

#[test]
fn data_kernels_match_the_host() {
    let Some(cxx) = cxx() else {
        println!("data_kernels_match_the_host: skipped: no C++ compiler (set CXX)");
        return;
    };
    let src = data::source();
    let emu = Emu::build(&cxx, &[&src]);
    let mut rng = Rng(5);
    let l = |entry: &str, grid: u32, args: Vec<Arg>| Launch {
        module: exec::ModuleKind::Data,
        entry: entry.into(),
        grid: (grid, 1, 1),
        block: (data::BLOCK, 1, 1),
        smem: 0,
        args,
    };
    // Embedding forward and backward, with out-of-range tokens.
    let (vocab, dim) = (11usize, 7usize);
    let table = rng.vec(vocab * dim, 1.0);
    let tokens: Vec<i32> = vec![0, 3, 10, 3, -1, 11, 5, 3];
    let mut out = vec![f32::NAN; tokens.len() * dim];
    emu.launch(
        0,
        &l(
            data::EMBEDDING_FWD_F32,
            2,
            vec![
                Arg::Ptr(tokens.as_ptr() as u64),
                Arg::Ptr(table.as_ptr() as u64),
                Arg::Ptr(out.as_mut_ptr() as u64),
                Arg::I32(tokens.len() as i32),
                Arg::I32(dim as i32),
                Arg::I32(vocab as i32),
            ],
        ),
    );
    let dout = rng.vec(tokens.len() * dim, 1.0);
    let mut dtable = vec![0.5f32; vocab * dim];
    let mut want_dt = dtable.clone();
    let idx = data::embedding_grad_index(&tokens, vocab);
    emu.launch(
        0,
        &l(
            data::EMBEDDING_BWD_F32,
            2,
            vec![
                Arg::Ptr(idx.unique.as_ptr() as u64),
                Arg::Ptr(idx.offsets.as_ptr() as u64),
                Arg::Ptr(idx.positions.as_ptr() as u64),
                Arg::Ptr(&idx.n_unique as *const i32 as u64),
                Arg::Ptr(dout.as_ptr() as u64),
                Arg::Ptr(dtable.as_mut_ptr() as u64),
                Arg::I32(dim as i32),
                Arg::I32(vocab as i32),
            ],
        ),
    );
    for (t, &tok) in tokens.iter().enumerate() {
        for d in 0..dim {
            let want = if (0..vocab as i32).contains(&tok) {
                table[tok as usize * dim + d]
            } else {
                0.0
            };
            assert_eq!(out[t * dim + d], want);
            if (0..vocab as i32).contains(&tok) {
                want_dt[tok as usize * dim + d] += dout[t * dim + d];
            }
        }
    }
    assert_eq!(dtable, want_dt, "embedding backward adds in token order");
    // Sum of squares through partials, then kiln_sum_parts.
    let x = rng.vec(10_000, 1.0);
    let mut parts = vec![f32::NAN; data::SUMSQ_PARTS_COUNT as usize];
    let mut total = [f32::NAN];
    emu.launch(
        0,
        &l(
            data::SUMSQ_PARTS,
            4,
            vec![
                Arg::Ptr(x.as_ptr() as u64),
                Arg::Ptr(parts.as_mut_ptr() as u64),
                Arg::I64(x.len() as i64),
            ],
        ),
    );
    emu.launch(
        0,
        &l(
            data::SUM_PARTS,
            1,
            vec![
                Arg::Ptr(parts.as_ptr() as u64),
                Arg::Ptr(total.as_mut_ptr() as u64),
                Arg::I32(4),
                Arg::I32(1),
            ],
        ),
    );
    let want: f64 = x.iter().map(|&v| (v as f64) * (v as f64)).sum();
    assert!(
        ((total[0] as f64) - want).abs() <= 1e-4 * want,
        "{} vs {want}",
        total[0]
    );
    // Gradient clipping factor.
    for (sumsq, max_norm, want) in [(4.0f32, 0.5f32, 0.25f32), (0.01, 1.0, 1.0), (0.0, 1.0, 1.0)] {
        let (sq, mn, mut out) = ([sumsq], [max_norm], [f32::NAN]);
        emu.launch(
            0,
            &Launch {
                block: (32, 1, 1),
                ..l(
                    data::CLIP_SCALE,
                    1,
                    vec![
                        Arg::Ptr(sq.as_ptr() as u64),
                        Arg::Ptr(mn.as_ptr() as u64),
                        Arg::Ptr(out.as_mut_ptr() as u64),
                    ],
                )
            },
        );
        assert_eq!(out[0], want, "clip({sumsq}, {max_norm})");
    }
    // bf16 conversions round to nearest even exactly like the host helpers.
    let mut v = rng.vec(1000, 3.0);
    v.extend([
        0.0,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        1.0 + 1.0 / 256.0,
        1.0 + 3.0 / 256.0,
    ]);
    let mut bits = vec![0u16; v.len()];
    let mut back = vec![0f32; v.len()];
    emu.launch(
        0,
        &l(
            data::F32_TO_BF16,
            2,
            vec![
                Arg::Ptr(v.as_ptr() as u64),
                Arg::Ptr(bits.as_mut_ptr() as u64),
                Arg::I64(v.len() as i64),
            ],
        ),
    );
    emu.launch(
        0,
        &l(
            data::BF16_TO_F32,
            2,
            vec![
                Arg::Ptr(bits.as_ptr() as u64),
                Arg::Ptr(back.as_mut_ptr() as u64),
                Arg::I64(v.len() as i64),
            ],
        ),
    );
    for ((&x, &b), &y) in v.iter().zip(&bits).zip(&back) {
        assert_eq!(b, f32_to_bf16(x), "{x}");
        assert_eq!(y.to_bits(), bf16_to_f32(b).to_bits());
    }
}

fn cpu_mask(m: AttentionMask, batch: usize, prefix: &mut Vec<usize>) -> cpu_attn::Mask<'_> {
    match m {
        AttentionMask::Full => cpu_attn::Mask::Full,
        AttentionMask::Causal => cpu_attn::Mask::Causal,
        AttentionMask::Local { window } => cpu_attn::Mask::Banded { window },
        AttentionMask::PrefixLm { prefix: p } => {
            *prefix = vec![p; batch];
            cpu_attn::Mask::PrefixLm { prefix_len: prefix }
        }
        AttentionMask::PrefixLmLengths => {
            unreachable!("the CUDA kernel refuses per-row prefix lengths; no case uses them")
        }
    }
}

fn seq_major() -> AttentionLayout {
    let s = HeadLayout::SeqMajor;
    AttentionLayout {
        q: s,
        k: s,
        v: s,
        o: s,
        d_o: s,
        dq: s,
        dk: s,
        dv: s,
    }
}

#[test]
fn attention_matches_the_cpu_kernel() {
    let Some(cxx) = cxx() else {
        println!("attention_matches_the_cpu_kernel: skipped: no C++ compiler (set CXX)");
        return;
    };
    let base = AttentionKernel {
        direction: Direction::Forward,
        batch: 2,
        heads: 2,
        kv_heads: 1,
        q_len: 70,
        kv_len: 70,
        head_dim: 20,
        scale: 0.3,
        mask: AttentionMask::Causal,
        has_bias: false,
        key_padding: false,
        layout: kiln_compiler::kernel::AttentionLayout::HEAD_MAJOR,
    };
    let cases: Vec<(AttentionKernel, Storage, usize)> = vec![
        (base, Storage::F32, 0),
        (
            AttentionKernel {
                q_len: 37,
                kv_len: 80,
                mask: AttentionMask::Full,
                has_bias: true,
                ..base
            },
            Storage::F32,
            2,
        ),
        (
            AttentionKernel {
                mask: AttentionMask::Local { window: 9 },
                ..base
            },
            Storage::Bf16,
            0,
        ),
        (
            AttentionKernel {
                mask: AttentionMask::PrefixLm { prefix: 30 },
                q_len: 50,
                kv_len: 66,
                ..base
            },
            Storage::F32,
            0,
        ),
        (
            AttentionKernel {
                has_bias: true,
                kv_heads: 2,
                ..base
            },
            Storage::F32,
            1,
        ),
        (
            AttentionKernel {
                mask: AttentionMask::Local { window: 0 },
                q_len: 5,
                kv_len: 5,
                ..base
            },
            Storage::F32,
            0,
        ),
        // Sequence-major operands (as fusion lowers GPT-2's heads: no transposes around the
        // kernel), GQA, and a mix of layouts with a bias in bf16.
        (
            AttentionKernel {
                layout: seq_major(),
                ..base
            },
            Storage::F32,
            0,
        ),
        (
            AttentionKernel {
                has_bias: true,
                q_len: 37,
                kv_len: 45,
                mask: AttentionMask::Full,
                layout: AttentionLayout {
                    k: HeadLayout::HeadMajor,
                    o: HeadLayout::HeadMajor,
                    dk: HeadLayout::HeadMajor,
                    ..seq_major()
                },
                ..base
            },
            Storage::Bf16,
            2,
        ),
        (
            AttentionKernel {
                head_dim: 144,
                q_len: 33,
                kv_len: 33,
                heads: 1,
                batch: 1,
                ..base
            },
            Storage::F32,
            0,
        ),
    ];
    // All modules in one host compile: each source lives in its own namespace, and its macros
    // are redefined before the next one is expanded.
    let mut sources: Vec<Source> = vec![];
    for (k, storage, _) in &cases {
        for direction in [Direction::Forward, Direction::Backward] {
            let v = attention::Variant::of(&AttentionKernel { direction, ..*k }, *storage);
            if !sources.iter().any(|s| s.name == v.name()) {
                sources.push(attention::source(&v).unwrap());
            }
        }
    }
    let emu = Emu::build(&cxx, &sources.iter().collect::<Vec<_>>());
    let mut rng = Rng(9);
    for (k, storage, bias_heads) in cases {
        let (b, h, hk, t, s, d) = (k.batch, k.heads, k.kv_heads, k.q_len, k.kv_len, k.head_dim);
        let bias_heads = if k.has_bias { bias_heads.max(1) } else { 0 };
        let mut q = rng.vec(b * h * t * d, 0.5);
        let mut kk = rng.vec(b * hk * s * d, 0.5);
        let mut v = rng.vec(b * hk * s * d, 1.0);
        let mut dout = rng.vec(b * h * t * d, 1.0);
        if storage == Storage::Bf16 {
            for x in [&mut q, &mut kk, &mut v, &mut dout] {
                *x = round_bf16(x);
            }
        }
        let mut bias = k.has_bias.then(|| rng.vec(bias_heads * t * s, 1.0));
        let mut prefix = vec![];
        let params = cpu_attn::AttentionParams {
            batch: b,
            q_heads: h,
            kv_heads: hk,
            q_len: t,
            kv_len: s,
            head_dim: d,
            scale: k.scale,
            mask: cpu_mask(k.mask, b, &mut prefix),
            key_len: None,
            kernel: cpu_attn::KernelChoice::Scalar,
        };
        let inputs = cpu_attn::AttentionInputs {
            q: &q,
            k: &kk,
            v: &v,
            bias: bias.as_deref(),
        };
        let mut o = vec![0f32; q.len()];
        let mut lse = vec![0f32; b * h * t];
        cpu_attn::attention_forward(&params, &inputs, &mut o, &mut lse).unwrap();
        let (mut dq, mut dk, mut dv) = (
            vec![0f32; q.len()],
            vec![0f32; kk.len()],
            vec![0f32; v.len()],
        );
        let mut dbias = bias.as_ref().map(|x| vec![0f32; x.len()]);
        cpu_attn::attention_backward(
            &params,
            &inputs,
            &o,
            &lse,
            &dout,
            cpu_attn::AttentionGrads {
                dq: &mut dq,
                dk: &mut dk,
                dv: &mut dv,
                dbias: dbias.as_deref_mut(),
            },
        )
        .unwrap();

        let kb = AttentionKernel {
            direction: Direction::Backward,
            ..k
        };
        let module_of = |kernel: &AttentionKernel| {
            let name = attention::Variant::of(kernel, storage).name();
            sources.iter().position(|s| s.name == name).unwrap()
        };
        let (fwd_i, bwd_i) = (module_of(&k), module_of(&kb));
        // The device tensors in the kernel's layouts; results are converted back to head-major.
        let (qs, kvs, l) = ((b, h, t, d), (b, hk, s, d), k.layout);
        let (mut gq, mut gk, mut gv, mut gdo) = (
            Buf::stored(&l.q.relayout(&q, qs, false), storage),
            Buf::stored(&l.k.relayout(&kk, kvs, false), storage),
            Buf::stored(&l.v.relayout(&v, kvs, false), storage),
            Buf::stored(&l.d_o.relayout(&dout, qs, false), storage),
        );
        let mut go = Buf::stored(&vec![f32::NAN; o.len()], storage);
        let mut glse = vec![f32::NAN; lse.len()];
        let ptrs = AttentionPtrs {
            q: gq.ptr(),
            k: gk.ptr(),
            v: gv.ptr(),
            bias: bias.as_mut().map(|x| (x.as_mut_ptr() as u64, bias_heads)),
            o: go.ptr(),
            lse: glse.as_mut_ptr() as u64,
        };
        for l in plan_attention_forward(&k, &ptrs).unwrap() {
            emu.launch(fwd_i, &l);
        }
        let mut gdq = Buf::stored(&vec![f32::NAN; dq.len()], storage);
        let mut gdk = Buf::stored(&vec![f32::NAN; dk.len()], storage);
        let mut gdv = Buf::stored(&vec![f32::NAN; dv.len()], storage);
        let mut gdb = dbias.as_ref().map(|x| vec![f32::NAN; x.len()]);
        let mut dscr = vec![f32::NAN; lse.len()];
        let grads = AttentionGradPtrs {
            d_out: gdo.ptr(),
            dq: gdq.ptr(),
            dk: gdk.ptr(),
            dv: gdv.ptr(),
            dbias: gdb.as_mut().map(|x| x.as_mut_ptr() as u64),
            d_scratch: dscr.as_mut_ptr() as u64,
        };
        for l in plan_attention_backward(&kb, &ptrs, &grads).unwrap() {
            emu.launch(bwd_i, &l);
        }
        let (atol, rtol) = match storage {
            Storage::F32 => (2e-5, 2e-4),
            Storage::Bf16 => (1e-2, 1e-2),
        };
        let name = format!(
            "{storage:?} {:?} d={d} t={t} s={s} h={h}/{hk} bias_heads={bias_heads} {:?}",
            k.mask, k.layout
        );
        let check = |what: &str, got: Vec<f32>, want: &[f32], rounded: bool| {
            let want = if rounded && storage == Storage::Bf16 {
                round_bf16(want)
            } else {
                want.to_vec()
            };
            let r = error_ratio(&got, &want, atol, rtol);
            assert!(
                r <= 1.0,
                "attention {name} {what}: error ratio {r}\n got {:?}\nwant {:?}",
                &got[..6.min(got.len())],
                &want[..6.min(want.len())]
            );
        };
        check("o", l.o.relayout(&go.f32s(), qs, true), &o, true);
        check("lse", glse, &lse, false);
        check("dq", l.dq.relayout(&gdq.f32s(), qs, true), &dq, true);
        check("dk", l.dk.relayout(&gdk.f32s(), kvs, true), &dk, true);
        check("dv", l.dv.relayout(&gdv.f32s(), kvs, true), &dv, true);
        if let (Some(g), Some(w)) = (gdb, &dbias) {
            check("dbias", g, w, false);
        }
    }
}
