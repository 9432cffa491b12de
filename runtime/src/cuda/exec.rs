//! Launching the backend's kernels on device addresses: row programs (with the deterministic
//! finishing of their cross-row sums), attention forward and backward, and the data kernels. An
//! executor for a compiled `Program` (schedule of kernels + arena plan) is a loop over these calls
//! between [`super::graph::Graph::capture`] and replays; it, and a `CudaBackend` implementing
//! [`crate::backend::Backend`], wait for the compiler to emit programs (no `Program` type exists
//! yet for any backend to consume).
//!
//! Every call enqueues on the device's one stream and never synchronizes, so any sequence of
//! them can be captured as a graph. Launch geometry is a pure function of the sizes
//! ([`super::codegen::launch_dims`], [`super::attention::grid`]).
//!
//! **Unverified until a GPU session** (`runtime/tests/cuda_conformance.rs`).

use std::sync::Arc;

use kiln_compiler::kernel::{AttentionKernel, Direction, OutputAccess, RowProgram};

use super::attention::{self, Variant};
use super::codegen::{self, RowKernel, RowLayout};
use super::device::{Arg, Device, Function, Module};
use super::{data, CudaError, Storage};

/// A generated, compiled and loaded row kernel.
#[derive(Debug, Clone)]
pub struct LoadedRow {
    pub kernel: RowKernel,
    function: Function,
    _module: Arc<Module>,
}

/// Floats of scratch a row launch needs for its partial sums.
pub fn partial_floats(k: &RowKernel, rows: usize, cols: usize, max_grid: u32) -> usize {
    let d = codegen::launch_dims(k, rows, cols, max_grid);
    k.reducing_outputs
        .iter()
        .map(|&o| match k.program.outputs[o].access {
            OutputAccess::ColSum => d.parts as usize * cols,
            _ => d.parts as usize,
        })
        .sum()
}

/// Device addresses of an attention call. `bias` comes with its head count (1 or `heads`).
#[derive(Clone, Copy, Debug)]
pub struct AttentionPtrs {
    pub q: u64,
    pub k: u64,
    pub v: u64,
    pub bias: Option<(u64, usize)>,
    /// Forward: written. Backward: read.
    pub o: u64,
    /// Forward: written. Backward: read.
    pub lse: u64,
}

/// Device addresses the attention backward writes; `d_scratch` holds `batch·heads·q_len` f32
/// (the row statistic `D`).
#[derive(Clone, Copy, Debug)]
pub struct AttentionGradPtrs {
    pub d_out: u64,
    pub dq: u64,
    pub dk: u64,
    pub dv: u64,
    pub dbias: Option<u64>,
    pub d_scratch: u64,
}

/// Launches kernels on one device.
#[derive(Debug)]
pub struct Exec<'d> {
    device: &'d Device,
    data: Arc<Module>,
    max_grid: u32,
}

impl<'d> Exec<'d> {
    pub fn new(device: &'d Device) -> Result<Exec<'d>, CudaError> {
        let data = device.module(&data::source())?;
        Ok(Exec {
            device,
            data,
            max_grid: device.info().sm_count.saturating_mul(8).max(1),
        })
    }

    pub fn device(&self) -> &'d Device {
        self.device
    }

    /// Largest grid of flat kernels on this device.
    pub fn max_grid(&self) -> u32 {
        self.max_grid
    }

    /// Generates, compiles and loads a row program with a storage layout.
    pub fn row(&self, prog: &RowProgram, layout: &RowLayout) -> Result<LoadedRow, CudaError> {
        let kernel = codegen::generate(prog, layout)?;
        let module = self.device.module(&kernel.source)?;
        let function = module.function(&kernel.entry)?;
        Ok(LoadedRow {
            kernel,
            function,
            _module: module,
        })
    }

    /// Runs a row kernel over `rows × cols` (the launches of [`plan_row`]).
    ///
    /// # Safety
    /// One address per input and output, each holding the elements its access implies for
    /// `rows × cols` in its layout's storage (as `kernel::eval::check_launch` states), `scratch`
    /// holding [`partial_floats`] f32. Outputs may alias `Full` inputs only in programs with a
    /// single column pass (in-place optimizer updates).
    pub unsafe fn run_row(
        &self,
        k: &LoadedRow,
        inputs: &[u64],
        outputs: &[u64],
        rows: usize,
        cols: usize,
        scratch: u64,
    ) -> Result<(), CudaError> {
        let launches = plan_row(
            &k.kernel,
            inputs,
            outputs,
            rows,
            cols,
            scratch,
            self.max_grid,
        )?;
        for l in &launches {
            let f = match l.module {
                ModuleKind::Row => k.function.clone(),
                ModuleKind::Data => self.data.function(&l.entry)?,
                ModuleKind::Attention => unreachable!("row plans launch row and data kernels"),
            };
            // SAFETY: the plan follows the kernels' parameter lists; sizes are the caller's
            // contract.
            unsafe { self.device.launch(&f, l.grid, l.block, l.smem, &l.args)? };
        }
        Ok(())
    }

    fn attention_module(
        &self,
        k: &AttentionKernel,
        storage: Storage,
    ) -> Result<Arc<Module>, CudaError> {
        attention::check(k)?;
        self.device
            .module(&attention::source(&Variant::of(k, storage))?)
    }

    /// Runs attention launches from one module, opting into the shared memory they need.
    unsafe fn run_attention(
        &self,
        k: &AttentionKernel,
        storage: Storage,
        launches: &[Launch],
    ) -> Result<(), CudaError> {
        let module = self.attention_module(k, storage)?;
        for l in launches {
            let f = module.function(&l.entry)?;
            if l.smem as usize > 48 * 1024 {
                self.device.allow_smem(&f, l.smem as usize)?;
            }
            // SAFETY: the plan follows the kernels' parameter lists; sizes are the caller's
            // contract.
            unsafe { self.device.launch(&f, l.grid, l.block, l.smem, &l.args)? };
        }
        Ok(())
    }

    /// Attention forward: writes `o` and `lse`.
    ///
    /// # Safety
    /// Addresses hold the tensors of `kernel::AttentionKernel`'s layout in `storage`
    /// (`lse` and `bias` f32).
    pub unsafe fn attention_forward(
        &self,
        k: &AttentionKernel,
        storage: Storage,
        p: &AttentionPtrs,
    ) -> Result<(), CudaError> {
        let mut k = *k;
        k.direction = Direction::Forward;
        let launches = plan_attention_forward(&k, p)?;
        // SAFETY: forwarded.
        unsafe { self.run_attention(&k, storage, &launches) }
    }

    /// Attention backward: overwrites `dq`, `dk`, `dv` (and `dbias`).
    ///
    /// # Safety
    /// As [`Exec::attention_forward`], plus the gradient addresses of [`AttentionGradPtrs`].
    pub unsafe fn attention_backward(
        &self,
        k: &AttentionKernel,
        storage: Storage,
        p: &AttentionPtrs,
        g: &AttentionGradPtrs,
    ) -> Result<(), CudaError> {
        let mut k = *k;
        k.direction = Direction::Backward;
        let launches = plan_attention_backward(&k, p, g)?;
        // SAFETY: forwarded.
        unsafe { self.run_attention(&k, storage, &launches) }
    }

    /// Copies `n` f32 at `src` to bf16 at `dst`.
    ///
    /// # Safety
    /// `src` holds `n` f32, `dst` `n` bf16.
    pub unsafe fn f32_to_bf16(&self, src: u64, dst: u64, n: usize) -> Result<(), CudaError> {
        let f = self.data.function(data::F32_TO_BF16)?;
        let grid = n
            .div_ceil(data::BLOCK as usize)
            .clamp(1, self.max_grid as usize) as u32;
        // SAFETY: caller's contract.
        unsafe {
            self.device.launch(
                &f,
                (grid, 1, 1),
                (data::BLOCK, 1, 1),
                0,
                &[Arg::Ptr(src), Arg::Ptr(dst), Arg::I64(n as i64)],
            )
        }
    }

    /// `scale[0] = min(1, max_norm[0] / max(sqrt(sumsq[0]), 1e-6))` on the device.
    ///
    /// # Safety
    /// Each address holds one f32.
    pub unsafe fn clip_scale(
        &self,
        sumsq: u64,
        max_norm: u64,
        scale: u64,
    ) -> Result<(), CudaError> {
        let f = self.data.function(data::CLIP_SCALE)?;
        // SAFETY: caller's contract.
        unsafe {
            self.device.launch(
                &f,
                (1, 1, 1),
                (32, 1, 1),
                0,
                &[Arg::Ptr(sumsq), Arg::Ptr(max_norm), Arg::Ptr(scale)],
            )
        }
    }

    /// `out[0] = Σ x[i]²` over `n` f32 (the global gradient norm's square), deterministic.
    ///
    /// # Safety
    /// `x` holds `n` f32, `parts` [`data::SUMSQ_PARTS_COUNT`] f32, `out` one f32.
    pub unsafe fn sum_squares(
        &self,
        x: u64,
        n: usize,
        parts: u64,
        out: u64,
    ) -> Result<(), CudaError> {
        let f = self.data.function(data::SUMSQ_PARTS)?;
        let sum = self.data.function(data::SUM_PARTS)?;
        // SAFETY: caller's contract; the grid is fixed so the partial count is too.
        unsafe {
            self.device.launch(
                &f,
                (data::SUMSQ_PARTS_COUNT, 1, 1),
                (data::BLOCK, 1, 1),
                0,
                &[Arg::Ptr(x), Arg::Ptr(parts), Arg::I64(n as i64)],
            )?;
            self.device.launch(
                &sum,
                (1, 1, 1),
                (data::BLOCK, 1, 1),
                0,
                &[
                    Arg::Ptr(parts),
                    Arg::Ptr(out),
                    Arg::I32(data::SUMSQ_PARTS_COUNT as i32),
                    Arg::I32(1),
                ],
            )
        }
    }
}

/// Which module a planned launch's entry point lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModuleKind {
    /// The row kernel's own module.
    Row,
    /// The data module ([`data::source`]).
    Data,
    /// The attention variant's module ([`attention::source`]).
    Attention,
}

/// One kernel launch, fully decided: which entry point, geometry, dynamic shared memory and
/// arguments. Planning is pure (no device), so it is tested without a GPU, and the CUDA-C
/// emulator test (`runtime/tests/cuda_emulate.rs`) runs exactly these launches on the host.
#[derive(Clone, Debug, PartialEq)]
pub struct Launch {
    pub module: ModuleKind,
    pub entry: String,
    pub grid: (u32, u32, u32),
    pub block: (u32, u32, u32),
    pub smem: u32,
    pub args: Vec<Arg>,
}

/// The launches of a row kernel over `rows × cols`: the kernel itself, then one
/// `kiln_sum_parts` per `ColSum`/`Sum` output, adding the per-block partials (kept in `scratch`,
/// [`partial_floats`] f32) in a fixed order.
pub fn plan_row(
    k: &RowKernel,
    inputs: &[u64],
    outputs: &[u64],
    rows: usize,
    cols: usize,
    scratch: u64,
    max_grid: u32,
) -> Result<Vec<Launch>, CudaError> {
    let prog = &k.program;
    let launch_err = |message: String| CudaError::Launch {
        name: prog.name.clone(),
        message,
    };
    if inputs.len() != prog.inputs.len() || outputs.len() != prog.outputs.len() {
        return Err(launch_err(format!(
            "{} inputs and {} outputs given, the program has {} and {}",
            inputs.len(),
            outputs.len(),
            prog.inputs.len(),
            prog.outputs.len()
        )));
    }
    if rows > i32::MAX as usize || cols > i32::MAX as usize || rows.checked_mul(cols).is_none() {
        return Err(launch_err(format!("{rows}×{cols} is too large")));
    }
    let d = codegen::launch_dims(k, rows, cols, max_grid);
    let mut args: Vec<Arg> = inputs.iter().map(|&p| Arg::Ptr(p)).collect();
    let mut partial_at = vec![0u64; outputs.len()];
    let mut offset = 0u64;
    for (o, &p) in outputs.iter().enumerate() {
        if k.reducing_outputs.contains(&o) {
            partial_at[o] = scratch + offset;
            args.push(Arg::Ptr(scratch + offset));
            let len = match prog.outputs[o].access {
                OutputAccess::ColSum => d.parts as u64 * cols as u64,
                _ => d.parts as u64,
            };
            offset += 4 * len;
        } else {
            args.push(Arg::Ptr(p));
        }
    }
    args.push(Arg::I32(rows as i32));
    args.push(Arg::I32(cols as i32));
    let mut out = vec![];
    if d.grid > 0 {
        out.push(Launch {
            module: ModuleKind::Row,
            entry: k.entry.clone(),
            grid: (d.grid, 1, 1),
            block: (d.block, 1, 1),
            smem: 0,
            args,
        });
    }
    for &o in &k.reducing_outputs {
        let n = match prog.outputs[o].access {
            OutputAccess::ColSum => cols,
            _ => 1,
        };
        out.push(Launch {
            module: ModuleKind::Data,
            entry: data::SUM_PARTS.into(),
            grid: (
                n.div_ceil(data::BLOCK as usize).clamp(1, 65_535) as u32,
                1,
                1,
            ),
            block: (data::BLOCK, 1, 1),
            smem: 0,
            args: vec![
                Arg::Ptr(partial_at[o]),
                Arg::Ptr(outputs[o]),
                Arg::I32(d.parts as i32),
                Arg::I32(n as i32),
            ],
        });
    }
    Ok(out)
}

fn bias_args(k: &AttentionKernel, p: &AttentionPtrs) -> Result<(u64, usize), CudaError> {
    match (k.has_bias, p.bias) {
        (true, Some((ptr, heads))) if heads == 1 || heads == k.heads => Ok((ptr, heads)),
        (true, Some((_, heads))) => Err(CudaError::Launch {
            name: "attention".into(),
            message: format!("bias has {heads} heads; expected 1 or {}", k.heads),
        }),
        (true, None) => Err(CudaError::Launch {
            name: "attention".into(),
            message: "the kernel has a bias but none was given".into(),
        }),
        (false, _) => Ok((0, 1)),
    }
}

fn common_args(k: &AttentionKernel, bias_heads: usize) -> Result<Vec<Arg>, CudaError> {
    Ok(vec![
        Arg::I32(k.batch as i32),
        Arg::I32(k.heads as i32),
        Arg::I32(k.kv_heads as i32),
        Arg::I32(k.q_len as i32),
        Arg::I32(k.kv_len as i32),
        Arg::F32(k.scale),
        Arg::I32(attention::mask_param(k.mask)?),
        Arg::I32(bias_heads as i32),
    ])
}

fn attn_launch(k: &AttentionKernel, entry: &str, bias_heads: usize, args: Vec<Arg>) -> Launch {
    let (gx, gy) = attention::grid(k, entry, bias_heads);
    Launch {
        module: ModuleKind::Attention,
        entry: entry.into(),
        grid: (gx, gy, 1),
        block: (attention::THREADS, 1, 1),
        smem: attention::smem_bytes(k.head_dim, entry) as u32,
        args,
    }
}

/// The launch of an attention forward.
pub fn plan_attention_forward(
    k: &AttentionKernel,
    p: &AttentionPtrs,
) -> Result<Vec<Launch>, CudaError> {
    attention::check(k)?;
    let (bias, bias_heads) = bias_args(k, p)?;
    let mut args = vec![
        Arg::Ptr(p.q),
        Arg::Ptr(p.k),
        Arg::Ptr(p.v),
        Arg::Ptr(bias),
        Arg::Ptr(p.o),
        Arg::Ptr(p.lse),
    ];
    args.extend(common_args(k, bias_heads)?);
    Ok(vec![attn_launch(k, attention::FWD, bias_heads, args)])
}

/// The launches of an attention backward: `D = rowsum(dO ∘ O)`, then `dQ` (and `dbias`), then
/// `dK`, `dV`.
pub fn plan_attention_backward(
    k: &AttentionKernel,
    p: &AttentionPtrs,
    g: &AttentionGradPtrs,
) -> Result<Vec<Launch>, CudaError> {
    attention::check(k)?;
    let (bias, bias_heads) = bias_args(k, p)?;
    let dbias = match (k.has_bias, g.dbias) {
        (true, Some(d)) => d,
        (true, None) => {
            return Err(CudaError::Launch {
                name: "attention".into(),
                message: "the kernel has a bias but no dbias address was given".into(),
            })
        }
        (false, _) => 0,
    };
    let rows = (k.batch * k.heads * k.q_len) as i64;
    let common = common_args(k, bias_heads)?;
    let pre = attn_launch(
        k,
        attention::BWD_PRE,
        bias_heads,
        vec![
            Arg::Ptr(p.o),
            Arg::Ptr(g.d_out),
            Arg::Ptr(g.d_scratch),
            Arg::I64(rows),
            Arg::I32(k.heads as i32),
            Arg::I32(k.q_len as i32),
        ],
    );
    let mut dq_args = vec![
        Arg::Ptr(p.q),
        Arg::Ptr(p.k),
        Arg::Ptr(p.v),
        Arg::Ptr(g.d_out),
        Arg::Ptr(p.lse),
        Arg::Ptr(g.d_scratch),
        Arg::Ptr(bias),
        Arg::Ptr(g.dq),
        Arg::Ptr(dbias),
    ];
    dq_args.extend(common.iter().copied());
    let mut kv_args = vec![
        Arg::Ptr(p.q),
        Arg::Ptr(p.k),
        Arg::Ptr(p.v),
        Arg::Ptr(g.d_out),
        Arg::Ptr(p.lse),
        Arg::Ptr(g.d_scratch),
        Arg::Ptr(bias),
        Arg::Ptr(g.dk),
        Arg::Ptr(g.dv),
    ];
    kv_args.extend(common);
    Ok(vec![
        pre,
        attn_launch(k, attention::BWD_DQ, bias_heads, dq_args),
        attn_launch(k, attention::BWD_DKDV, bias_heads, kv_args),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_compiler::kernel::library;

    #[test]
    fn row_plans_route_partials_through_scratch() {
        let p = library::layernorm_bwd();
        let k = codegen::generate(&p, &RowLayout::f32(&p)).unwrap();
        let (rows, cols) = (10, 8);
        let plan = plan_row(&k, &[1, 2, 3, 4, 5], &[100, 200, 300], rows, cols, 1000, 64).unwrap();
        assert_eq!(plan.len(), 3);
        assert_eq!(plan[0].entry, k.entry);
        // dx goes straight to its output; dgamma and dbeta to consecutive partial ranges.
        assert_eq!(
            &plan[0].args[5..8],
            &[Arg::Ptr(100), Arg::Ptr(1000), Arg::Ptr(1000 + 4 * 10 * 8)]
        );
        assert_eq!(
            plan[1].args,
            vec![Arg::Ptr(1000), Arg::Ptr(200), Arg::I32(10), Arg::I32(8)]
        );
        assert_eq!(
            plan[2].args,
            vec![Arg::Ptr(1320), Arg::Ptr(300), Arg::I32(10), Arg::I32(8)]
        );
        assert_eq!(partial_floats(&k, rows, cols, 64), 2 * 10 * 8);
        // No rows: no main launch, but the sums are still written (as zeros).
        let plan = plan_row(&k, &[1, 2, 3, 4, 5], &[100, 200, 300], 0, cols, 1000, 64).unwrap();
        assert_eq!(plan.len(), 2);
        assert!(plan.iter().all(|l| l.module == ModuleKind::Data));
        // Wrong buffer counts are errors.
        assert!(plan_row(&k, &[1], &[100, 200, 300], rows, cols, 0, 64).is_err());
    }

    #[test]
    fn attention_plans_check_bias_arguments() {
        let k = AttentionKernel {
            direction: Direction::Backward,
            batch: 2,
            heads: 4,
            kv_heads: 2,
            q_len: 10,
            kv_len: 12,
            head_dim: 16,
            scale: 0.25,
            mask: kiln_compiler::kernel::AttentionMask::Causal,
            has_bias: true,
            key_padding: false,
            layout: kiln_compiler::kernel::AttentionLayout::HEAD_MAJOR,
        };
        let p = AttentionPtrs {
            q: 1,
            k: 2,
            v: 3,
            bias: None,
            o: 4,
            lse: 5,
        };
        let g = AttentionGradPtrs {
            d_out: 6,
            dq: 7,
            dk: 8,
            dv: 9,
            dbias: Some(10),
            d_scratch: 11,
        };
        assert!(plan_attention_forward(&k, &p).is_err());
        let pb = AttentionPtrs {
            bias: Some((12, 3)),
            ..p
        };
        assert!(plan_attention_forward(&k, &pb).is_err());
        let pb = AttentionPtrs {
            bias: Some((12, 4)),
            ..p
        };
        let plan = plan_attention_backward(&k, &pb, &g).unwrap();
        assert_eq!(plan.len(), 3);
        assert_eq!(plan[1].grid, (1, 4, 1));
        assert!(plan_attention_backward(&k, &pb, &AttentionGradPtrs { dbias: None, ..g }).is_err());
    }
}
