//! Row program → CUDA C: the CUDA backend's one code generator for the kernel IR (the CPU
//! backend's twin is `cpu::jit::codegen`). Both follow [`kiln_compiler::kernel::schedule()`], so
//! they agree on which values each column pass computes.
//!
//! Shape of a generated kernel (not a flat map): a grid-stride loop hands rows to thread blocks
//! (`r = blockIdx.x; r += gridDim.x`); inside a row, the schedule's segments run in order —
//! row-level values (computed redundantly by every thread: they are a few scalar operations),
//! then a column pass in which thread `t` handles columns `t, t + blockDim.x, ...` (coalesced),
//! accumulating each row reduction in a register, followed by one block reduction (warp shuffles,
//! then 32 floats of shared memory) whose result every thread receives. Kernel-level values are
//! computed once per thread before the row loop.
//!
//! A flat map ([`kiln_compiler::kernel::Schedule::is_flat_map`]: no reductions, positions or
//! per-row/per-column operands) is a plain grid-stride loop over the `rows·cols` elements, where
//! the flat index is also `rand_uniform`'s index.
//!
//! Cross-row sums (`ColSum`, `Sum` outputs) are deterministic: each block accumulates into its own
//! row of a partial buffer (`[parts, cols]` or `[parts]`; a thread only ever touches its own
//! columns, so no atomics), and the `kiln_sum_parts` data kernel ([`super::data`]) adds the parts
//! in a fixed order. The number of parts depends only on `rows` and `cols` ([`launch_dims`]).
//!
//! Numerics: arithmetic in `f32` whatever the [`Storage`]; compiled with `--fmad=false` and IEEE
//! division/square root, so `a * b + c` rounds twice unless the IR says `fma`, like the reference
//! evaluator. Transcendentals are CUDA's `expf`, `logf`, `tanhf`, `erff` (≤ 2 ulp). Integer
//! arithmetic wraps (done in `unsigned`: signed overflow is undefined in C++). `rand_uniform` is
//! bit-exact with `kernel::rng`.

use std::fmt::Write as _;

use kiln_compiler::kernel::{
    schedule, BinaryOp, CmpOp, DType, IndexKind, InputAccess, Inst, Level, OutputAccess, ReduceOp,
    RowProgram, Schedule, UnaryOp, ValueId, ValueType,
};

use super::nvrtc::Source;
use super::{CudaError, Storage};

/// Device helpers every generated row kernel includes (also used by [`super::data`]).
pub const PRELUDE: &str = r#"// ---- kiln prelude (runtime/src/cuda/codegen.rs) ----
typedef unsigned short kiln_bf16;
__device__ __forceinline__ float kiln_bf16_to_f32(kiln_bf16 h) { return __uint_as_float(((unsigned)h) << 16); }
__device__ __forceinline__ kiln_bf16 kiln_f32_to_bf16(float x) {
    unsigned u = __float_as_uint(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (kiln_bf16)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (kiln_bf16)(u >> 16);
}
__device__ __forceinline__ float kiln_maxf(float a, float b) { return a > b ? a : b; }
__device__ __forceinline__ float kiln_minf(float a, float b) { return a < b ? a : b; }
__device__ __forceinline__ int kiln_maxi(int a, int b) { return a > b ? a : b; }
__device__ __forceinline__ int kiln_mini(int a, int b) { return a < b ? a : b; }
__device__ __forceinline__ int kiln_iadd(int a, int b) { return (int)((unsigned)a + (unsigned)b); }
__device__ __forceinline__ int kiln_isub(int a, int b) { return (int)((unsigned)a - (unsigned)b); }
__device__ __forceinline__ int kiln_imul(int a, int b) { return (int)((unsigned)a * (unsigned)b); }
__device__ __forceinline__ int kiln_ineg(int a) { return (int)(0u - (unsigned)a); }
__device__ __forceinline__ int kiln_iabs(int a) { return a < 0 ? kiln_ineg(a) : a; }
__device__ __forceinline__ int kiln_idiv(int a, int b) { return b == 0 ? 0 : (b == -1 ? kiln_ineg(a) : a / b); }
__device__ __forceinline__ int kiln_irem(int a, int b) { return (b == 0 || b == -1) ? 0 : a % b; }
__device__ __forceinline__ unsigned kiln_mix32(unsigned x) {
    x ^= x >> 16; x *= 0x7feb352du; x ^= x >> 15; x *= 0x846ca68bu; x ^= x >> 16; return x;
}
__device__ __forceinline__ unsigned kiln_rand_key(unsigned seed, unsigned step, unsigned stream) {
    unsigned k = kiln_mix32(seed ^ 0x9e3779b9u);
    k = kiln_mix32(k ^ step);
    return kiln_mix32(k ^ (stream * 0x85ebca6bu));
}
__device__ __forceinline__ float kiln_rand_uniform(unsigned key, unsigned index) {
    unsigned bits = kiln_mix32(kiln_mix32(index ^ key) + key);
    return (float)(bits >> 8) * 5.9604644775390625e-8f;
}
__device__ __forceinline__ float kiln_warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float kiln_warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = kiln_maxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
// Block-wide reductions; blockDim.x is a multiple of 32. Every thread gets the same result
// (every warp reduces the same 32 partials in the same order). The first barrier protects
// `red` from the previous reduction's readers.
__device__ float kiln_block_sum(float v, float* red) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    v = kiln_warp_sum(v);
    __syncthreads();
    if (lane == 0) red[warp] = v;
    __syncthreads();
    return kiln_warp_sum(lane < nwarps ? red[lane] : 0.0f);
}
__device__ float kiln_block_max(float v, float* red) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    v = kiln_warp_max(v);
    __syncthreads();
    if (lane == 0) red[warp] = v;
    __syncthreads();
    return kiln_warp_max(lane < nwarps ? red[lane] : __int_as_float(0xff800000));
}
// ---- end of prelude ----
"#;

/// How each buffer of a row program is stored on the device. `I32` inputs and outputs other than
/// `Full` are always `F32`-stored (statistics, gradients of parameters, losses).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RowLayout {
    pub inputs: Vec<Storage>,
    pub outputs: Vec<Storage>,
}

impl RowLayout {
    /// Every buffer `f32`.
    pub fn f32(prog: &RowProgram) -> Self {
        RowLayout {
            inputs: vec![Storage::F32; prog.inputs.len()],
            outputs: vec![Storage::F32; prog.outputs.len()],
        }
    }

    /// Mixed precision: `Full` f32 inputs and `Full` outputs in bf16, everything else f32.
    pub fn bf16_activations(prog: &RowProgram) -> Self {
        RowLayout {
            inputs: prog
                .inputs
                .iter()
                .map(|i| match (i.dtype, i.access) {
                    (DType::F32, InputAccess::Full) => Storage::Bf16,
                    _ => Storage::F32,
                })
                .collect(),
            outputs: prog
                .outputs
                .iter()
                .map(|o| match o.access {
                    OutputAccess::Full => Storage::Bf16,
                    _ => Storage::F32,
                })
                .collect(),
        }
    }
}

/// A generated row kernel and what its launcher must know.
#[derive(Clone, Debug, PartialEq)]
pub struct RowKernel {
    pub program: RowProgram,
    pub layout: RowLayout,
    /// The module source; its single entry point is `entry`.
    pub source: Source,
    pub entry: String,
    /// A grid-stride loop over elements instead of rows.
    pub flat: bool,
    /// Indices of `ColSum` and `Sum` outputs: the kernel writes per-block partials for them.
    pub reducing_outputs: Vec<usize>,
}

/// Threads per block of flat kernels.
pub const FLAT_BLOCK: u32 = 256;
/// Upper bound on partial rows for `ColSum`/`Sum` outputs.
pub const MAX_PARTS: usize = 256;
/// Upper bound on `parts × cols` floats of one partial buffer (16 MiB).
pub const PARTIAL_BUDGET: usize = 1 << 22;

/// Grid and block of one launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchDims {
    pub grid: u32,
    pub block: u32,
    /// Blocks of a reducing kernel = rows of its partial buffers (0 when `rows == 0`).
    pub parts: u32,
}

/// Launch geometry for `rows × cols`. Depends only on the kernel kind and the sizes (never on the
/// device), so results are the same on every GPU. `max_grid` bounds flat kernels' grids (a few
/// blocks per SM is enough for a grid-stride loop).
pub fn launch_dims(kernel: &RowKernel, rows: usize, cols: usize, max_grid: u32) -> LaunchDims {
    if kernel.flat {
        let n = rows.saturating_mul(cols);
        let blocks = n
            .div_ceil(FLAT_BLOCK as usize)
            .min(max_grid.max(1) as usize);
        return LaunchDims {
            grid: blocks as u32,
            block: FLAT_BLOCK,
            parts: 0,
        };
    }
    let block = (cols.div_ceil(4).div_ceil(32) * 32).clamp(32, 1024) as u32;
    if kernel.reducing_outputs.is_empty() {
        let grid = rows.min(i32::MAX as usize) as u32;
        LaunchDims {
            grid,
            block,
            parts: 0,
        }
    } else {
        let parts = rows
            .min(MAX_PARTS)
            .min((PARTIAL_BUDGET / cols.max(1)).max(1));
        LaunchDims {
            grid: parts as u32,
            block,
            parts: parts as u32,
        }
    }
}

fn err(prog: &RowProgram, message: impl Into<String>) -> CudaError {
    CudaError::Codegen {
        name: prog.name.clone(),
        message: message.into(),
    }
}

/// A C identifier from a program name.
pub fn c_ident(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if s.is_empty() {
        "anon".into()
    } else {
        s
    }
}

/// An exact C `float` literal.
pub fn f32_literal(x: f32) -> String {
    if x.is_finite() {
        let s = format!("{x:?}");
        let s = if s.contains(['.', 'e']) {
            s
        } else {
            format!("{s}.0")
        };
        if x.is_sign_negative() {
            format!("({s}f)")
        } else {
            format!("{s}f")
        }
    } else {
        format!("__int_as_float({:#010x})", x.to_bits() as i32)
    }
}

fn i32_literal(x: i32) -> String {
    if x == i32::MIN {
        "(-2147483647 - 1)".into()
    } else if x < 0 {
        format!("({x})")
    } else {
        x.to_string()
    }
}

fn ctype(t: ValueType) -> &'static str {
    match t {
        ValueType::F32 => "float",
        ValueType::I32 => "int",
        ValueType::Mask => "bool",
    }
}

fn v(id: ValueId) -> String {
    format!("v{}", id.0)
}

/// Where the element being computed sits.
struct ElemCtx {
    /// Index into `Full` buffers.
    full: &'static str,
    /// `rand_uniform`'s flat index, as `unsigned`.
    rand: &'static str,
}

const ROW_CTX: ElemCtx = ElemCtx {
    full: "rbase + c",
    rand: "(unsigned)(rbase + c)",
};
const FLAT_CTX: ElemCtx = ElemCtx {
    full: "i",
    rand: "(unsigned)i",
};

struct Gen<'p> {
    prog: &'p RowProgram,
    layout: &'p RowLayout,
    sched: &'p Schedule,
    out: String,
}

impl Gen<'_> {
    fn ty(&self, id: ValueId) -> ValueType {
        self.sched.typing.ty[id.index()]
    }

    fn level(&self, id: ValueId) -> Level {
        self.sched.typing.level[id.index()]
    }

    /// The C expression of a non-reduction instruction.
    fn expr(&self, id: ValueId, ctx: &ElemCtx) -> String {
        let inst = self.prog.body[id.index()];
        match inst {
            Inst::Load(input) => {
                let k = input.index();
                let decl = &self.prog.inputs[k];
                let index = match decl.access {
                    InputAccess::Full => ctx.full,
                    InputAccess::PerRow => "r",
                    InputAccess::PerCol => "c",
                    InputAccess::Scalar => "0",
                };
                match self.layout.inputs[k] {
                    Storage::F32 => format!("in{k}[{index}]"),
                    Storage::Bf16 => format!("kiln_bf16_to_f32(in{k}[{index}])"),
                }
            }
            Inst::ConstF32(x) => f32_literal(x),
            Inst::ConstI32(x) => i32_literal(x),
            Inst::Index(kind) => match kind {
                IndexKind::Row => "r".into(),
                IndexKind::Col => "c".into(),
                IndexKind::Rows => "rows".into(),
                IndexKind::Cols => "cols".into(),
            },
            Inst::Unary(op, a) => {
                let a_s = v(a);
                match self.ty(a) {
                    ValueType::F32 => match op {
                        UnaryOp::Neg => format!("-{a_s}"),
                        UnaryOp::Abs => format!("fabsf({a_s})"),
                        UnaryOp::Exp => format!("expf({a_s})"),
                        UnaryOp::Log => format!("logf({a_s})"),
                        UnaryOp::Sqrt => format!("sqrtf({a_s})"),
                        UnaryOp::Rsqrt => format!("1.0f / sqrtf({a_s})"),
                        UnaryOp::Recip => format!("1.0f / {a_s}"),
                        UnaryOp::Tanh => format!("tanhf({a_s})"),
                        UnaryOp::Erf => format!("erff({a_s})"),
                        UnaryOp::Sigmoid => format!("1.0f / (1.0f + expf(-{a_s}))"),
                        // The validator only lets `Not` see masks.
                        UnaryOp::Not => format!("!{a_s}"),
                    },
                    ValueType::I32 => match op {
                        UnaryOp::Abs => format!("kiln_iabs({a_s})"),
                        _ => format!("kiln_ineg({a_s})"),
                    },
                    ValueType::Mask => format!("!{a_s}"),
                }
            }
            Inst::Binary(op, a, b) => {
                let (a_s, b_s) = (v(a), v(b));
                match self.ty(a) {
                    ValueType::F32 => match op {
                        BinaryOp::Add => format!("{a_s} + {b_s}"),
                        BinaryOp::Sub => format!("{a_s} - {b_s}"),
                        BinaryOp::Mul => format!("{a_s} * {b_s}"),
                        BinaryOp::Div => format!("{a_s} / {b_s}"),
                        BinaryOp::Max => format!("kiln_maxf({a_s}, {b_s})"),
                        BinaryOp::Min => format!("kiln_minf({a_s}, {b_s})"),
                        // Not typable on f32 (validator).
                        BinaryOp::Rem | BinaryOp::And | BinaryOp::Or => a_s,
                    },
                    ValueType::I32 => {
                        let f = match op {
                            BinaryOp::Add => "kiln_iadd",
                            BinaryOp::Sub => "kiln_isub",
                            BinaryOp::Mul => "kiln_imul",
                            BinaryOp::Div => "kiln_idiv",
                            BinaryOp::Rem => "kiln_irem",
                            BinaryOp::Max => "kiln_maxi",
                            BinaryOp::Min => "kiln_mini",
                            // Not typable on i32 (validator).
                            BinaryOp::And | BinaryOp::Or => "kiln_iadd",
                        };
                        format!("{f}({a_s}, {b_s})")
                    }
                    ValueType::Mask => match op {
                        BinaryOp::Or => format!("{a_s} || {b_s}"),
                        _ => format!("{a_s} && {b_s}"),
                    },
                }
            }
            Inst::Fma(a, b, c) => format!("fmaf({}, {}, {})", v(a), v(b), v(c)),
            Inst::Cmp(op, a, b) => {
                let o = match op {
                    CmpOp::Eq => "==",
                    CmpOp::Ne => "!=",
                    CmpOp::Lt => "<",
                    CmpOp::Le => "<=",
                    CmpOp::Gt => ">",
                    CmpOp::Ge => ">=",
                };
                format!("{} {o} {}", v(a), v(b))
            }
            Inst::Select(m, a, b) => format!("{} ? {} : {}", v(m), v(a), v(b)),
            Inst::I32ToF32(a) => format!("__int2float_rn({})", v(a)),
            Inst::RandUniform { seed, step, stream } => format!(
                "kiln_rand_uniform(kiln_rand_key((unsigned){}, (unsigned){}, {stream}u), {})",
                v(seed),
                v(step),
                ctx.rand
            ),
            // Reductions are emitted by the column pass that computes them.
            Inst::Reduce(..) => unreachable!("reductions are not expressions"),
        }
    }

    fn define(&mut self, indent: &str, id: ValueId, ctx: &ElemCtx) {
        let line = format!(
            "{indent}const {} {} = {};\n",
            ctype(self.ty(id)),
            v(id),
            self.expr(id, ctx)
        );
        self.out.push_str(&line);
    }

    fn store(&self, o: usize, value: ValueId, index: &str) -> String {
        match self.layout.outputs[o] {
            Storage::F32 => format!("out{o}[{index}] = {};", v(value)),
            Storage::Bf16 => format!("out{o}[{index}] = kiln_f32_to_bf16({});", v(value)),
        }
    }
}

fn check_layout(prog: &RowProgram, layout: &RowLayout) -> Result<(), CudaError> {
    if layout.inputs.len() != prog.inputs.len() || layout.outputs.len() != prog.outputs.len() {
        return Err(err(
            prog,
            format!(
                "layout has {} inputs and {} outputs, the program {} and {}",
                layout.inputs.len(),
                layout.outputs.len(),
                prog.inputs.len(),
                prog.outputs.len()
            ),
        ));
    }
    for (k, (decl, &s)) in prog.inputs.iter().zip(&layout.inputs).enumerate() {
        if s == Storage::Bf16 && decl.dtype != DType::F32 {
            return Err(err(
                prog,
                format!(
                    "input {k} `{}` is i32 and cannot be stored as bf16",
                    decl.name
                ),
            ));
        }
    }
    for (k, (decl, &s)) in prog.outputs.iter().zip(&layout.outputs).enumerate() {
        if s == Storage::Bf16 && decl.access != OutputAccess::Full {
            return Err(err(
                prog,
                format!(
                    "output {k} `{}` is {:?}; only Full outputs may be stored as bf16",
                    decl.name, decl.access
                ),
            ));
        }
    }
    Ok(())
}

/// Generates the CUDA C of `prog` with the given storage of its buffers.
///
/// Kernel parameters, in order: one pointer per input (`const float*`, `const int*`, or
/// `const unsigned short*` for bf16), one per output (`Full`: `[rows·cols]`, `PerRow`: `[rows]`,
/// `ColSum`: partials `[parts, cols]`, `Sum`: partials `[parts]`), then `int rows, int cols`.
/// `Scalar` inputs are device pointers too, so a captured CUDA graph reads their current values.
pub fn generate(prog: &RowProgram, layout: &RowLayout) -> Result<RowKernel, CudaError> {
    let sched = schedule(prog).map_err(|e| err(prog, e.to_string()))?;
    check_layout(prog, layout)?;
    let flat = sched.is_flat_map(prog);
    let entry = format!("kiln_row_{}", c_ident(&prog.name));
    let reducing_outputs: Vec<usize> = prog
        .outputs
        .iter()
        .enumerate()
        .filter(|(_, o)| matches!(o.access, OutputAccess::ColSum | OutputAccess::Sum))
        .map(|(i, _)| i)
        .collect();

    let mut g = Gen {
        prog,
        layout,
        sched: &sched,
        out: String::new(),
    };
    // Header: the program itself, so a snapshot or an NVRTC log can be read against the IR.
    g.out
        .push_str("// Generated by kiln (runtime/src/cuda/codegen.rs) from this row program:\n");
    for line in prog.to_string().lines() {
        let _ = writeln!(g.out, "//   {line}");
    }
    let _ = writeln!(
        g.out,
        "// layout: inputs [{}], outputs [{}]; {}",
        layout
            .inputs
            .iter()
            .map(|s| format!("{s:?}"))
            .collect::<Vec<_>>()
            .join(", "),
        layout
            .outputs
            .iter()
            .map(|s| format!("{s:?}"))
            .collect::<Vec<_>>()
            .join(", "),
        if flat {
            "flat map".to_string()
        } else {
            format!("{} column pass(es)", sched.passes().count())
        }
    );
    g.out.push_str(PRELUDE);

    // Signature.
    let mut params = vec![];
    for (k, decl) in prog.inputs.iter().enumerate() {
        let t = match (decl.dtype, layout.inputs[k]) {
            (DType::I32, _) => "const int*",
            (DType::F32, Storage::F32) => "const float*",
            (DType::F32, Storage::Bf16) => "const kiln_bf16*",
        };
        params.push(format!("{t} in{k} /* {} */", decl.name));
    }
    for (k, decl) in prog.outputs.iter().enumerate() {
        let t = match layout.outputs[k] {
            Storage::F32 => "float*",
            Storage::Bf16 => "kiln_bf16*",
        };
        let what = match decl.access {
            OutputAccess::Full | OutputAccess::PerRow => decl.name.clone(),
            OutputAccess::ColSum => format!("{}: partials [parts, cols]", decl.name),
            OutputAccess::Sum => format!("{}: partials [parts]", decl.name),
        };
        params.push(format!("{t} out{k} /* {what} */"));
    }
    params.push("int rows".into());
    params.push("int cols".into());
    let _ = writeln!(
        g.out,
        "extern \"C\" __global__ void __launch_bounds__(1024) {entry}(\n    {})\n{{",
        params.join(",\n    ")
    );

    let kernel_ctx = &ROW_CTX; // Kernel-level values never read elements.
    for &id in &sched.kernel_values {
        g.define("    ", id, kernel_ctx);
    }

    if flat {
        emit_flat(&mut g);
    } else {
        emit_rows(&mut g);
    }
    g.out.push_str("}\n");

    let source = Source {
        name: entry.clone(),
        code: g.out,
        kernels: vec![entry.clone()],
        fmad: false,
    };
    Ok(RowKernel {
        program: prog.clone(),
        layout: layout.clone(),
        source,
        entry,
        flat,
        reducing_outputs,
    })
}

fn emit_flat(g: &mut Gen<'_>) {
    g.out
        .push_str("    const long long n = (long long)rows * cols;\n");
    g.out.push_str(
        "    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;\n         i += (long long)gridDim.x * blockDim.x) {\n",
    );
    let passes: Vec<_> = g.sched.passes().cloned().collect();
    for pass in &passes {
        for &id in &pass.elem_values {
            g.define("        ", id, &FLAT_CTX);
        }
        for &o in &pass.outputs {
            let line = g.store(o, g.prog.outputs[o].value, "i");
            let _ = writeln!(g.out, "        {line}");
        }
    }
    g.out.push_str("    }\n");
}

fn emit_rows(g: &mut Gen<'_>) {
    let prog = g.prog;
    let has_reduce = g.sched.passes().any(|p| !p.reductions.is_empty());
    if has_reduce {
        g.out.push_str("    __shared__ float kiln_red[32];\n");
    }
    // Zero this block's partial rows of ColSum outputs (each thread its own columns), and start
    // the per-block sums of Sum outputs.
    for (o, decl) in prog.outputs.iter().enumerate() {
        match decl.access {
            OutputAccess::ColSum => {
                let _ = writeln!(
                    g.out,
                    "    float* part{o} = out{o} + (long long)blockIdx.x * cols;\n    for (int c = threadIdx.x; c < cols; c += blockDim.x) part{o}[c] = 0.0f;"
                );
            }
            OutputAccess::Sum => {
                let _ = writeln!(g.out, "    float sum{o} = 0.0f;");
            }
            OutputAccess::Full | OutputAccess::PerRow => {}
        }
    }
    g.out
        .push_str("    for (int r = blockIdx.x; r < rows; r += gridDim.x) {\n");
    g.out
        .push_str("        const long long rbase = (long long)r * cols;\n        (void)rbase;\n");
    let segments = g.sched.segments.clone();
    for (s, seg) in segments.iter().enumerate() {
        for &id in &seg.row_values {
            if matches!(prog.body[id.index()], Inst::Reduce(..)) {
                continue; // Defined at the end of the pass that accumulates it.
            }
            g.define("        ", id, &ROW_CTX);
        }
        let Some(pass) = &seg.pass else { continue };
        let _ = writeln!(g.out, "        // column pass {s}");
        for &r in &pass.reductions {
            let Inst::Reduce(op, _) = prog.body[r.index()] else {
                continue;
            };
            let init = match op {
                ReduceOp::Sum => "0.0f".to_string(),
                ReduceOp::Max => f32_literal(f32::NEG_INFINITY),
            };
            let _ = writeln!(g.out, "        float acc{} = {init};", r.0);
        }
        g.out
            .push_str("        for (int c = threadIdx.x; c < cols; c += blockDim.x) {\n");
        for &id in &pass.elem_values {
            g.define("            ", id, &ROW_CTX);
        }
        for &r in &pass.reductions {
            let Inst::Reduce(op, a) = prog.body[r.index()] else {
                continue;
            };
            let line = match op {
                ReduceOp::Sum => format!("acc{0} = acc{0} + {1};", r.0, v(a)),
                ReduceOp::Max => format!("acc{0} = kiln_maxf(acc{0}, {1});", r.0, v(a)),
            };
            let _ = writeln!(g.out, "            {line}");
        }
        for &o in &pass.outputs {
            let value = prog.outputs[o].value;
            let line = match prog.outputs[o].access {
                OutputAccess::ColSum => format!("part{o}[c] += {};", v(value)),
                _ => g.store(o, value, "rbase + c"),
            };
            let _ = writeln!(g.out, "            {line}");
        }
        g.out.push_str("        }\n");
        for &r in &pass.reductions {
            let Inst::Reduce(op, _) = prog.body[r.index()] else {
                continue;
            };
            let f = match op {
                ReduceOp::Sum => "kiln_block_sum",
                ReduceOp::Max => "kiln_block_max",
            };
            let _ = writeln!(
                g.out,
                "        const float v{0} = {f}(acc{0}, kiln_red);",
                r.0
            );
        }
    }
    for &o in &g.sched.row_outputs {
        let value = prog.outputs[o].value;
        debug_assert!(g.level(value) <= Level::Row);
        match prog.outputs[o].access {
            OutputAccess::PerRow => {
                let _ = writeln!(
                    g.out,
                    "        if (threadIdx.x == 0) out{o}[r] = {};",
                    v(value)
                );
            }
            OutputAccess::Sum => {
                let _ = writeln!(g.out, "        sum{o} += {};", v(value));
            }
            OutputAccess::Full | OutputAccess::ColSum => {}
        }
    }
    g.out.push_str("    }\n");
    for (o, decl) in prog.outputs.iter().enumerate() {
        if decl.access == OutputAccess::Sum {
            let _ = writeln!(
                g.out,
                "    if (threadIdx.x == 0) out{o}[blockIdx.x] = sum{o};"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_compiler::kernel::library;

    #[test]
    fn literals_are_exact_c() {
        assert_eq!(f32_literal(1.0), "1.0f");
        assert_eq!(f32_literal(-0.5), "(-0.5f)");
        assert_eq!(f32_literal(1e-5), "1e-5f");
        assert_eq!(f32_literal(0.797_884_6), "0.7978846f");
        assert_eq!(f32_literal(f32::NEG_INFINITY), "__int_as_float(0xff800000)");
        assert_eq!(f32_literal(f32::INFINITY), "__int_as_float(0x7f800000)");
        assert_eq!(i32_literal(i32::MIN), "(-2147483647 - 1)");
        assert_eq!(i32_literal(-3), "(-3)");
        // Every finite literal parses back to the same bits.
        for x in [0.1f32, 3.4028235e38, 1.1754944e-38, 1e-45, -7.25, 123456.79] {
            let lit = f32_literal(x);
            let t = lit
                .trim_start_matches('(')
                .trim_end_matches(')')
                .trim_end_matches('f');
            assert_eq!(t.parse::<f32>().unwrap().to_bits(), x.to_bits(), "{lit}");
        }
    }

    #[test]
    fn kinds_and_reducing_outputs() {
        let k = generate(&library::adamw(), &RowLayout::f32(&library::adamw())).unwrap();
        assert!(k.flat);
        assert!(k.reducing_outputs.is_empty());
        let p = library::layernorm_bwd();
        let k = generate(&p, &RowLayout::f32(&p)).unwrap();
        assert!(!k.flat);
        assert_eq!(k.reducing_outputs, vec![1, 2]);
        // One block reduction per row reduction: `row_sum(g)` and `row_sum(g * xhat)`.
        assert_eq!(k.source.code.matches("kiln_block_sum(acc").count(), 2);
        let p = library::cross_entropy_fwd();
        let k = generate(&p, &RowLayout::f32(&p)).unwrap();
        assert_eq!(k.reducing_outputs, vec![2]);
        assert_eq!(k.source.code.matches("kiln_block_max(acc").count(), 1);
    }

    #[test]
    fn bf16_layout_rules() {
        let p = library::layernorm_fwd(1e-5);
        let layout = RowLayout::bf16_activations(&p);
        assert_eq!(
            layout.inputs,
            vec![Storage::Bf16, Storage::F32, Storage::F32]
        );
        assert_eq!(
            layout.outputs,
            vec![Storage::Bf16, Storage::F32, Storage::F32]
        );
        let k = generate(&p, &layout).unwrap();
        assert!(k.source.code.contains("kiln_bf16_to_f32(in0[rbase + c])"));
        assert!(k.source.code.contains("kiln_f32_to_bf16("));
        // A bf16 per-row statistic is refused.
        let mut bad = layout.clone();
        bad.outputs[1] = Storage::Bf16;
        assert!(matches!(generate(&p, &bad), Err(CudaError::Codegen { .. })));
        // So is a bf16 integer input.
        let p = library::cross_entropy_fwd();
        let mut bad = RowLayout::f32(&p);
        bad.inputs[1] = Storage::Bf16;
        assert!(matches!(generate(&p, &bad), Err(CudaError::Codegen { .. })));
        // And a layout of the wrong length.
        let bad = RowLayout {
            inputs: vec![],
            outputs: vec![],
        };
        assert!(generate(&p, &bad).is_err());
    }

    #[test]
    fn launch_dims_depend_only_on_sizes() {
        let p = library::layernorm_bwd();
        let k = generate(&p, &RowLayout::f32(&p)).unwrap();
        let d = launch_dims(&k, 1000, 768, 1000);
        assert_eq!(d.block, 192);
        assert_eq!(d.parts, 256);
        assert_eq!(d.grid, 256);
        assert_eq!(launch_dims(&k, 10, 768, 7).parts, 10);
        assert_eq!(launch_dims(&k, 0, 768, 7).parts, 0);
        // Wide rows: partial buffers stay within budget.
        let d = launch_dims(&k, 100_000, 50_257, 1);
        assert!(d.parts as usize * 50_257 <= PARTIAL_BUDGET);
        assert_eq!(d.block, 1024);
        let p = library::residual_add();
        let k = generate(&p, &RowLayout::f32(&p)).unwrap();
        let d = launch_dims(&k, 4, 100, 1000);
        assert_eq!((d.grid, d.block), (2, FLAT_BLOCK));
        assert_eq!(launch_dims(&k, 4000, 1000, 64).grid, 64);
    }
}
