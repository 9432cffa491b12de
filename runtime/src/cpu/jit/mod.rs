//! Cranelift JIT for the kernel IR's row programs: compiles a [`RowProgram`] to native `f32x4`
//! code, runs it over a `rows × cols` launch split across threads, and caches compiled kernels by
//! structural hash.
//!
//! Why a JIT rather than interpreting the IR: fused kernels are memory-bound only if the per-element
//! work is a handful of vector instructions; an interpreter, or a libm call per element (~7 ns),
//! is 10-50× slower (CRATES.md). Why Cranelift rather than LLVM: it is pure Rust, builds in
//! minutes and compiles a kernel in about a millisecond.
//!
//! Numerics: results match [`kiln_compiler::kernel::evaluate`] up to summation order in reductions
//! and the documented error of the polynomial transcendentals (see [`math`]); `rand_uniform` is
//! bit-exact. Results never depend on the number of threads: the row split depends only on
//! `rows` and `cols`, and per-task partial sums (`ColSum`, `Sum`) are combined in task order.

mod codegen;
mod math;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use cranelift_codegen::isa::OwnedTargetIsa;
use cranelift_codegen::settings::{self, Configurable};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{default_libcall_names, Linkage, Module};
use kiln_compiler::kernel::eval::check_launch;
use kiln_compiler::kernel::{
    schedule, structural_hash, structurally_equal, DType, InputAccess, OutputAccess, RowProgram,
};
use rayon::prelude::*;

pub use kiln_compiler::kernel::{LaunchError, ValidateError};

use codegen::RawKernelFn;
use math::Target;

/// Why a kernel could not be compiled or launched.
#[derive(Debug, thiserror::Error)]
pub enum JitError {
    #[error("invalid row program: {0}")]
    Invalid(#[from] ValidateError),
    #[error(transparent)]
    Launch(#[from] LaunchError),
    #[error("input {index} `{name}`: a scalar value was given for a {access:?} input")]
    ScalarForBuffer {
        index: usize,
        name: String,
        access: InputAccess,
    },
    #[error("the host CPU is not supported by the JIT: {0}")]
    Host(String),
    #[error("Cranelift could not compile kernel `{name}`: {message}")]
    Codegen { name: String, message: String },
}

/// Code generation choices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct JitOptions {
    /// `f32x4` vectors per iteration of the main column loop (1 disables unrolling).
    pub unroll: u32,
}

impl Default for JitOptions {
    fn default() -> Self {
        JitOptions { unroll: 4 }
    }
}

/// Whether a launch may use the rayon thread pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parallelism {
    /// Split rows over the pool when the launch is large enough.
    Auto,
    /// Run on the calling thread (same results as `Auto`, bit for bit).
    Serial,
}

/// One input of a launch.
#[derive(Clone, Copy, Debug)]
pub enum KernelInput<'a> {
    F32(&'a [f32]),
    I32(&'a [i32]),
    /// A `Scalar` f32 input given by value.
    ScalarF32(f32),
    /// A `Scalar` i32 input given by value.
    ScalarI32(i32),
}

/// Launches smaller than this many elements run on one thread; larger ones are split into tasks
/// of about this size (64 KiB per stream: the per-task cost of rayon is then negligible).
const TASK_ELEMS: usize = 1 << 14;
/// Upper bound on tasks for programs with `ColSum` outputs (each task keeps a `[cols]` partial).
const MAX_REDUCING_TASKS: usize = 64;

/// Owns the executable memory of one compiled kernel.
struct ModuleHolder(Option<JITModule>);

// SAFETY: the module is only touched when dropped (through `&mut self`); the code it owns is
// immutable and callable from any thread.
unsafe impl Send for ModuleHolder {}
// SAFETY: as above, no shared access to the module ever happens.
unsafe impl Sync for ModuleHolder {}

impl Drop for ModuleHolder {
    fn drop(&mut self) {
        if let Some(m) = self.0.take() {
            // SAFETY: the only pointer into this memory is the `JitKernel::func` that owns this
            // holder and is being dropped with it.
            unsafe { m.free_memory() };
        }
    }
}

/// A compiled row program.
pub struct JitKernel {
    program: RowProgram,
    flat: bool,
    func: RawKernelFn,
    compile_time: Duration,
    // Declared last: dropped after `func` is no longer reachable.
    _module: ModuleHolder,
}

impl std::fmt::Debug for JitKernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JitKernel")
            .field("name", &self.program.name)
            .field("flat", &self.flat)
            .field("compile_time", &self.compile_time)
            .finish()
    }
}

fn host_isa() -> Result<OwnedTargetIsa, JitError> {
    static ISA: OnceLock<Result<OwnedTargetIsa, String>> = OnceLock::new();
    ISA.get_or_init(|| {
        let mut flags = settings::builder();
        let set = |f: &mut settings::Builder, k: &str, v: &str| {
            f.set(k, v).map_err(|e| format!("setting {k}={v}: {e}"))
        };
        set(&mut flags, "opt_level", "speed")?;
        set(&mut flags, "is_pic", "false")?;
        set(&mut flags, "use_colocated_libcalls", "false")?;
        let verify = if cfg!(debug_assertions) {
            "true"
        } else {
            "false"
        };
        set(&mut flags, "enable_verifier", verify)?;
        let builder = cranelift_native::builder().map_err(|e| e.to_string())?;
        builder
            .finish(settings::Flags::new(flags))
            .map_err(|e| e.to_string())
    })
    .clone()
    .map_err(JitError::Host)
}

fn target_of(isa: &OwnedTargetIsa) -> Target {
    let has_fma = isa
        .isa_flags()
        .iter()
        .any(|f| f.name == "has_fma" && f.as_bool() == Some(true));
    Target {
        fma: has_fma || cfg!(target_arch = "aarch64"),
    }
}

fn codegen_err(prog: &RowProgram, e: impl std::fmt::Debug) -> JitError {
    JitError::Codegen {
        name: prog.name.clone(),
        message: format!("{e:?}"),
    }
}

/// The Cranelift IR and the disassembly of the machine code for `prog` (for inspection and
/// tuning; not needed to run kernels).
pub fn debug_listing(prog: &RowProgram, opts: JitOptions) -> Result<(String, String), JitError> {
    let sched = schedule(prog)?;
    let isa = host_isa()?;
    let mut func = cranelift_codegen::ir::Function::with_name_signature(
        cranelift_codegen::ir::UserFuncName::default(),
        codegen::signature(isa.default_call_conv()),
    );
    let mut fctx = FunctionBuilderContext::new();
    {
        let mut b = FunctionBuilder::new(&mut func, &mut fctx);
        codegen::emit(&mut b, prog, &sched, target_of(&isa), opts.unroll);
        b.finalize(isa.frontend_config());
    }
    let clif = func.display().to_string();
    let mut ctx = cranelift_codegen::Context::for_function(func);
    ctx.set_disasm(true);
    let mut ctrl = cranelift_codegen::control::ControlPlane::default();
    let code = ctx
        .compile(&*isa, &mut ctrl)
        .map_err(|e| codegen_err(prog, e))?;
    let disasm = code.vcode.clone().unwrap_or_default();
    Ok((clif, disasm))
}

impl JitKernel {
    /// Validates and compiles `prog` with default options.
    pub fn compile(prog: &RowProgram) -> Result<JitKernel, JitError> {
        Self::compile_with(prog, JitOptions::default())
    }

    pub fn compile_with(prog: &RowProgram, opts: JitOptions) -> Result<JitKernel, JitError> {
        let start = Instant::now();
        let sched = schedule(prog)?;
        let isa = host_isa()?;
        let target = target_of(&isa);
        let mut module = JITModule::new(JITBuilder::with_isa(isa.clone(), default_libcall_names()));
        let sig = codegen::signature(isa.default_call_conv());
        let id = module
            .declare_function("kiln_row_kernel", Linkage::Local, &sig)
            .map_err(|e| codegen_err(prog, e))?;
        let mut ctx = module.make_context();
        ctx.func.signature = sig;
        let mut fctx = FunctionBuilderContext::new();
        {
            let mut b = FunctionBuilder::new(&mut ctx.func, &mut fctx);
            codegen::emit(&mut b, prog, &sched, target, opts.unroll);
            b.finalize(module.target_config());
        }
        module
            .define_function(id, &mut ctx)
            .map_err(|e| codegen_err(prog, e))?;
        module
            .finalize_definitions()
            .map_err(|e| codegen_err(prog, e))?;
        let code = module.get_finalized_function(id);
        // SAFETY: `code` is the finalized function declared above with `codegen::signature`,
        // which is `RawKernelFn`'s ABI (six i64 parameters, no return, the host's C convention).
        let func = unsafe { std::mem::transmute::<*const u8, RawKernelFn>(code) };
        let flat = sched.is_flat_map(prog);
        Ok(JitKernel {
            program: prog.clone(),
            flat,
            func,
            compile_time: start.elapsed(),
            _module: ModuleHolder(Some(module)),
        })
    }

    pub fn program(&self) -> &RowProgram {
        &self.program
    }

    pub fn compile_time(&self) -> Duration {
        self.compile_time
    }

    /// Runs the kernel over `rows × cols`, splitting rows across threads when large enough.
    /// Buffer counts, dtypes and lengths are checked against the program (errors, not panics).
    pub fn run(
        &self,
        inputs: &[KernelInput<'_>],
        outputs: &mut [&mut [f32]],
        rows: usize,
        cols: usize,
    ) -> Result<(), JitError> {
        self.run_with(inputs, outputs, rows, cols, Parallelism::Auto)
    }

    pub fn run_with(
        &self,
        inputs: &[KernelInput<'_>],
        outputs: &mut [&mut [f32]],
        rows: usize,
        cols: usize,
        par: Parallelism,
    ) -> Result<(), JitError> {
        let shapes: Vec<(DType, usize)> = inputs
            .iter()
            .map(|i| match i {
                KernelInput::F32(s) => (DType::F32, s.len()),
                KernelInput::I32(s) => (DType::I32, s.len()),
                KernelInput::ScalarF32(_) => (DType::F32, 1),
                KernelInput::ScalarI32(_) => (DType::I32, 1),
            })
            .collect();
        let out_lens: Vec<usize> = outputs.iter().map(|o| o.len()).collect();
        for (index, (input, decl)) in inputs.iter().zip(&self.program.inputs).enumerate() {
            let by_value = matches!(input, KernelInput::ScalarF32(_) | KernelInput::ScalarI32(_));
            if by_value && decl.access != InputAccess::Scalar {
                return Err(JitError::ScalarForBuffer {
                    index,
                    name: decl.name.clone(),
                    access: decl.access,
                });
            }
        }
        check_launch(&self.program, &shapes, &out_lens, rows, cols)?;
        // Scalars passed by value live here for the duration of the launch.
        let scalars: Vec<u32> = inputs
            .iter()
            .map(|i| match i {
                KernelInput::ScalarF32(x) => x.to_bits(),
                KernelInput::ScalarI32(x) => *x as u32,
                _ => 0,
            })
            .collect();
        let in_ptrs: Vec<*const u8> = inputs
            .iter()
            .zip(&scalars)
            .map(|(i, s)| match i {
                KernelInput::F32(x) => x.as_ptr() as *const u8,
                KernelInput::I32(x) => x.as_ptr() as *const u8,
                KernelInput::ScalarF32(_) | KernelInput::ScalarI32(_) => {
                    s as *const u32 as *const u8
                }
            })
            .collect();
        let out_ptrs: Vec<*mut u8> = outputs
            .iter_mut()
            .map(|o| o.as_mut_ptr() as *mut u8)
            .collect();
        // SAFETY: lengths and dtypes were checked against the program above; the borrows keep the
        // buffers alive and (being `&` vs `&mut`) non-overlapping for the whole launch.
        unsafe { self.launch(&in_ptrs, &out_ptrs, rows, cols, par) };
        Ok(())
    }

    /// Runs the kernel on raw buffers (for an executor working in one arena). Only the counts of
    /// `inputs` and `outputs` and the launch size are checked.
    ///
    /// # Safety
    /// Each pointer must be valid for its declared dtype and the length its access implies for
    /// `rows × cols` (`Full`: rows·cols, `PerRow`: rows, `PerCol`/`ColSum`: cols, `Scalar`/`Sum`:
    /// 1), aligned to 4 bytes, for the whole call. Outputs must not overlap each other. An output
    /// may alias a `Full` input of the same shape only when the program has a single column pass
    /// (no row reductions), e.g. an in-place optimizer update; otherwise no output may overlap an
    /// input.
    pub unsafe fn run_raw(
        &self,
        inputs: &[*const u8],
        outputs: &[*mut u8],
        rows: usize,
        cols: usize,
        par: Parallelism,
    ) -> Result<(), JitError> {
        let shapes: Vec<(DType, usize)> = self
            .program
            .inputs
            .iter()
            .map(|d| (d.dtype, d.access.len(rows, cols).unwrap_or(0)))
            .take(inputs.len())
            .collect();
        let out_lens: Vec<usize> = self
            .program
            .outputs
            .iter()
            .map(|d| d.access.len(rows, cols).unwrap_or(0))
            .take(outputs.len())
            .collect();
        if shapes.len() != inputs.len() {
            return Err(LaunchError::InputCount {
                expected: self.program.inputs.len(),
                found: inputs.len(),
            }
            .into());
        }
        if out_lens.len() != outputs.len() {
            return Err(LaunchError::OutputCount {
                expected: self.program.outputs.len(),
                found: outputs.len(),
            }
            .into());
        }
        check_launch(&self.program, &shapes, &out_lens, rows, cols)?;
        // SAFETY: forwarded to the caller's contract.
        unsafe { self.launch(inputs, outputs, rows, cols, par) };
        Ok(())
    }

    /// # Safety
    /// As [`JitKernel::run_raw`], with the launch size already checked.
    unsafe fn launch(
        &self,
        inputs: &[*const u8],
        outputs: &[*mut u8],
        rows: usize,
        cols: usize,
        par: Parallelism,
    ) {
        let n_in = inputs.len();
        let base: Vec<usize> = inputs
            .iter()
            .map(|&p| p as usize)
            .chain(outputs.iter().map(|&p| p as usize))
            .collect();
        let func = self.func;
        let threads = par == Parallelism::Auto && rayon::current_num_threads() > 1;

        if self.flat {
            // A pure map: cut the flat element range into chunks, each run as one row.
            let n = rows * cols;
            let chunks: Vec<(usize, usize)> = (0..n.div_ceil(TASK_ELEMS))
                .map(|t| (t * TASK_ELEMS, ((t + 1) * TASK_ELEMS).min(n)))
                .collect();
            let run_chunk = |&(start, end): &(usize, usize)| {
                let args: Vec<usize> = base
                    .iter()
                    .enumerate()
                    .map(|(i, &p)| {
                        let full = if i < n_in {
                            self.program.inputs[i].access == InputAccess::Full
                        } else {
                            true
                        };
                        if full {
                            p + 4 * start
                        } else {
                            p
                        }
                    })
                    .collect();
                // SAFETY: the chunk `[start, end)` lies inside every `Full` buffer (length
                // rows·cols, checked by the caller); scalars are not offset.
                unsafe {
                    func(
                        args.as_ptr() as *const *mut u8,
                        0,
                        1,
                        (end - start) as i64,
                        1,
                        start as i64,
                    )
                }
            };
            if threads && chunks.len() > 1 {
                chunks.par_iter().for_each(run_chunk);
            } else {
                chunks.iter().for_each(run_chunk);
            }
            return;
        }

        let reducing: Vec<usize> = self
            .program
            .outputs
            .iter()
            .enumerate()
            .filter(|(_, o)| matches!(o.access, OutputAccess::ColSum | OutputAccess::Sum))
            .map(|(i, _)| i)
            .collect();
        let mut rows_per_task = (TASK_ELEMS / cols.max(1)).max(1);
        let has_colsum = self
            .program
            .outputs
            .iter()
            .any(|o| o.access == OutputAccess::ColSum);
        if has_colsum {
            rows_per_task = rows_per_task.max(rows.div_ceil(MAX_REDUCING_TASKS));
        }
        struct Task {
            r0: usize,
            r1: usize,
            scratch: Vec<Vec<f32>>,
        }
        let mut tasks: Vec<Task> = (0..rows.div_ceil(rows_per_task))
            .map(|t| Task {
                r0: t * rows_per_task,
                r1: ((t + 1) * rows_per_task).min(rows),
                scratch: reducing
                    .iter()
                    .map(|&o| {
                        let len = match self.program.outputs[o].access {
                            OutputAccess::ColSum => cols,
                            _ => 1,
                        };
                        vec![0.0f32; len]
                    })
                    .collect(),
            })
            .collect();
        let run_task = |task: &mut Task| {
            let mut args = base.clone();
            for (k, &o) in reducing.iter().enumerate() {
                args[n_in + o] = task.scratch[k].as_mut_ptr() as usize;
            }
            // SAFETY: rows `[r0, r1)` are inside every buffer (checked by the caller); reducing
            // outputs point at this task's own scratch of the right length.
            unsafe {
                func(
                    args.as_ptr() as *const *mut u8,
                    task.r0 as i64,
                    task.r1 as i64,
                    cols as i64,
                    rows as i64,
                    0,
                )
            }
        };
        if threads && tasks.len() > 1 {
            tasks.par_iter_mut().for_each(run_task);
        } else {
            tasks.iter_mut().for_each(run_task);
        }
        for (k, &o) in reducing.iter().enumerate() {
            let len = match self.program.outputs[o].access {
                OutputAccess::ColSum => cols,
                _ => 1,
            };
            // SAFETY: the caller guarantees the output holds `len` f32s and is not aliased.
            let out = unsafe { std::slice::from_raw_parts_mut(outputs[o] as *mut f32, len) };
            out.fill(0.0);
            for task in &tasks {
                for (d, s) in out.iter_mut().zip(&task.scratch[k]) {
                    *d += *s;
                }
            }
        }
    }
}

/// Compiled kernels keyed by structural hash (names do not matter), shared across threads.
#[derive(Debug, Default)]
pub struct KernelCache {
    opts: JitOptions,
    map: Mutex<HashMap<u64, Vec<Arc<JitKernel>>>>,
}

impl KernelCache {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_options(opts: JitOptions) -> Self {
        KernelCache {
            opts,
            map: Mutex::default(),
        }
    }

    /// The compiled kernel for `prog`, compiling it on first use.
    pub fn get_or_compile(&self, prog: &RowProgram) -> Result<Arc<JitKernel>, JitError> {
        let key = structural_hash(prog);
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let bucket = map.entry(key).or_default();
        if let Some(k) = bucket
            .iter()
            .find(|k| structurally_equal(k.program(), prog))
        {
            return Ok(Arc::clone(k));
        }
        let k = Arc::new(JitKernel::compile_with(prog, self.opts)?);
        bucket.push(Arc::clone(&k));
        Ok(k)
    }

    /// Number of distinct compiled kernels.
    pub fn len(&self) -> usize {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
