//! GEMMs of the CUDA backend through cuBLAS (`cublasGemmStridedBatchedEx`): fp32 runs use TF32
//! tensor cores with fp32 accumulation; mixed-precision runs read bf16 operands and accumulate in
//! fp32, writing fp32 or bf16.
//!
//! The kernel IR's GEMM is row-major (`D[b] = alpha·op(A[b])·op(B[b]) (+ D[b])`), cuBLAS is
//! column-major. A row-major matrix is the column-major storage of its transpose, so we ask cuBLAS
//! for `Dᵀ = op(B)ᵀ·op(A)ᵀ`: operands swapped, each transpose flag kept (see [`plan`]). The mapping
//! is a pure function, tested here without a GPU by running the column-major product it describes
//! on the host against a row-major reference. cuBLASLt (epilogue fusion: bias, GELU) is the next
//! step once a GPU can measure it.
//!
//! The cuBLAS calls are **unverified until a GPU session**.

use std::ffi::c_void;

use cudarc::cublas::{result as blas, sys as bsys};
use cudarc::driver::result as dres;

use kiln_compiler::kernel::GemmKernel;

use super::device::Device;
use super::{cublas_err, driver_err, libs, CudaError, Storage};

/// cuBLAS workspace (set explicitly so that graph capture never makes cuBLAS allocate).
pub const WORKSPACE_BYTES: usize = 32 << 20;

/// One column-major strided-batched call, as cuBLAS takes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlasCall {
    /// Transpose the first operand (the IR's `B`).
    pub trans_first: bool,
    /// Transpose the second operand (the IR's `A`).
    pub trans_second: bool,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub ld_first: usize,
    pub ld_second: usize,
    pub ld_out: usize,
    pub stride_first: usize,
    pub stride_second: usize,
    pub stride_out: usize,
    pub batch: usize,
}

/// The cuBLAS call for a row-major GEMM kernel.
pub fn plan(g: &GemmKernel) -> BlasCall {
    // First operand: B. Row-major `[k, n]` (not transposed) is column-major `n × k` with ld n,
    // which is op(B)ᵀ as is. Row-major `[n, k]` (transposed) is column-major `k × n`, ld k:
    // transpose it.
    let (trans_first, ld_first) = if g.b.transposed {
        (true, g.k)
    } else {
        (false, g.n)
    };
    // Second operand: A, likewise: `[m, k]` → column-major `k × m` (ld k); `[k, m]` → ld m.
    let (trans_second, ld_second) = if g.a.transposed {
        (true, g.m)
    } else {
        (false, g.k)
    };
    BlasCall {
        trans_first,
        trans_second,
        m: g.n,
        n: g.m,
        k: g.k,
        ld_first: ld_first.max(1),
        ld_second: ld_second.max(1),
        ld_out: g.n.max(1),
        stride_first: g.b.batch_stride,
        stride_second: g.a.batch_stride,
        stride_out: g.m * g.n,
        batch: g.batch,
    }
}

/// How a GEMM reads and writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemmPrecision {
    /// fp32 operands, fp32 arithmetic (no tensor cores): for checks that need fp32 accuracy.
    F32,
    /// fp32 operands, TF32 tensor cores, fp32 accumulate and output (fp32 training runs).
    Tf32,
    /// bf16 operands, fp32 accumulate, output stored as given.
    Bf16 { out: Storage },
}

/// A cuBLAS handle bound to the device's stream, with its own workspace.
#[derive(Debug)]
pub struct Blas {
    handle: bsys::cublasHandle_t,
    workspace: u64,
}

// SAFETY: the handle is only used through `&self` methods that first bind the device context;
// cuBLAS handles may be used from any thread (not concurrently, which `&mut`-free use on one
// stream respects in this backend: one executor drives one device).
unsafe impl Send for Blas {}

impl Blas {
    /// Creates the handle (an error when cuBLAS is not installed).
    pub fn new(device: &Device) -> Result<Blas, CudaError> {
        libs::require_cublas()?;
        device.bind()?;
        let handle = blas::create_handle().map_err(cublas_err("cublasCreate"))?;
        // SAFETY: fresh handle; the stream belongs to the bound context.
        unsafe { blas::set_stream(handle, device.stream() as bsys::cudaStream_t) }
            .map_err(cublas_err("cublasSetStream"))?;
        // SAFETY: plain allocation, freed in Drop.
        let workspace =
            unsafe { dres::malloc_sync(WORKSPACE_BYTES) }.map_err(driver_err("cuMemAlloc"))?;
        // SAFETY: the workspace holds WORKSPACE_BYTES and outlives the handle.
        unsafe {
            bsys::cublasSetWorkspace_v2(handle, workspace as *mut c_void, WORKSPACE_BYTES)
                .result()
                .map_err(cublas_err("cublasSetWorkspace"))?;
        }
        Ok(Blas { handle, workspace })
    }

    /// `D = alpha·op(A)·op(B) (+ D)` on device addresses `a`, `b`, `d`.
    ///
    /// # Safety
    /// Each address must hold its operand for the whole batch in the element type the precision
    /// implies (`Tf32`: f32; `Bf16`: bf16 operands, output as `out`).
    pub unsafe fn gemm(
        &self,
        device: &Device,
        g: &GemmKernel,
        precision: GemmPrecision,
        a: u64,
        b: u64,
        d: u64,
    ) -> Result<(), CudaError> {
        if g.batch == 0 || g.m == 0 || g.n == 0 {
            return Ok(());
        }
        let c = plan(g);
        let int = |x: usize| {
            i32::try_from(x).map_err(|_| CudaError::Launch {
                name: "gemm".into(),
                message: format!("dimension {x} does not fit cuBLAS's int"),
            })
        };
        let long = |x: usize| {
            i64::try_from(x).map_err(|_| CudaError::Launch {
                name: "gemm".into(),
                message: format!("stride {x} does not fit cuBLAS's long long"),
            })
        };
        use bsys::cublasComputeType_t as C;
        use bsys::cublasOperation_t as Op;
        use bsys::cudaDataType as T;
        let (in_t, out_t, compute) = match precision {
            GemmPrecision::F32 => (T::CUDA_R_32F, T::CUDA_R_32F, C::CUBLAS_COMPUTE_32F),
            GemmPrecision::Tf32 => (
                T::CUDA_R_32F,
                T::CUDA_R_32F,
                C::CUBLAS_COMPUTE_32F_FAST_TF32,
            ),
            GemmPrecision::Bf16 { out } => (
                T::CUDA_R_16BF,
                match out {
                    Storage::F32 => T::CUDA_R_32F,
                    Storage::Bf16 => T::CUDA_R_16BF,
                },
                C::CUBLAS_COMPUTE_32F,
            ),
        };
        let op = |t: bool| if t { Op::CUBLAS_OP_T } else { Op::CUBLAS_OP_N };
        let alpha: f32 = g.alpha;
        let beta: f32 = if g.accumulate { 1.0 } else { 0.0 };
        device.bind()?;
        // SAFETY: the caller guarantees the operands; alpha/beta are host f32 (the handle's
        // default pointer mode) matching the fp32 compute type.
        unsafe {
            blas::gemm_strided_batched_ex(
                self.handle,
                op(c.trans_first),
                op(c.trans_second),
                int(c.m)?,
                int(c.n)?,
                int(c.k)?,
                &alpha as *const f32 as *const c_void,
                b as *const c_void,
                in_t,
                int(c.ld_first)?,
                long(c.stride_first)?,
                a as *const c_void,
                in_t,
                int(c.ld_second)?,
                long(c.stride_second)?,
                &beta as *const f32 as *const c_void,
                d as *mut c_void,
                out_t,
                int(c.ld_out)?,
                long(c.stride_out)?,
                int(c.batch)?,
                compute,
                bsys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(cublas_err("cublasGemmStridedBatchedEx"))
    }
}

impl Drop for Blas {
    fn drop(&mut self) {
        // SAFETY: created in `new`, destroyed once; the workspace is freed after the handle.
        unsafe {
            let _ = blas::destroy_handle(self.handle);
            let _ = dres::free_sync(self.workspace);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_compiler::kernel::GemmOperand;

    /// Runs a column-major strided-batched GEMM the way cuBLAS defines it:
    /// `C = alpha·op(X)·op(Y) + beta·C` with `op(X)` `m×k`, `op(Y)` `k×n`, all column-major.
    fn colmajor(c: &BlasCall, x: &[f32], y: &[f32], out: &mut [f32], alpha: f32, beta: f32) {
        for b in 0..c.batch {
            for j in 0..c.n {
                for i in 0..c.m {
                    let mut s = 0.0f64;
                    for l in 0..c.k {
                        let xv = if c.trans_first {
                            x[b * c.stride_first + l + i * c.ld_first]
                        } else {
                            x[b * c.stride_first + i + l * c.ld_first]
                        };
                        let yv = if c.trans_second {
                            y[b * c.stride_second + j + l * c.ld_second]
                        } else {
                            y[b * c.stride_second + l + j * c.ld_second]
                        };
                        s += xv as f64 * yv as f64;
                    }
                    let o = &mut out[b * c.stride_out + i + j * c.ld_out];
                    *o = (alpha as f64 * s + beta as f64 * *o as f64) as f32;
                }
            }
        }
    }

    fn rowmajor(g: &GemmKernel, a: &[f32], b: &[f32], d: &mut [f32]) {
        for bi in 0..g.batch {
            for i in 0..g.m {
                for j in 0..g.n {
                    let mut s = 0.0f64;
                    for l in 0..g.k {
                        let av = if g.a.transposed {
                            a[bi * g.a.batch_stride + l * g.m + i]
                        } else {
                            a[bi * g.a.batch_stride + i * g.k + l]
                        };
                        let bv = if g.b.transposed {
                            b[bi * g.b.batch_stride + j * g.k + l]
                        } else {
                            b[bi * g.b.batch_stride + l * g.n + j]
                        };
                        s += av as f64 * bv as f64;
                    }
                    let o = &mut d[bi * g.m * g.n + i * g.n + j];
                    let prev = if g.accumulate { *o as f64 } else { 0.0 };
                    *o = (g.alpha as f64 * s + prev) as f32;
                }
            }
        }
    }

    #[test]
    fn plan_matches_row_major_semantics() {
        let mut seed = 7u32;
        let mut next = || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / 16_777_216.0 - 0.5
        };
        for &(m, n, k) in &[(3, 5, 4), (1, 7, 2), (6, 1, 3), (4, 4, 1)] {
            for ta in [false, true] {
                for tb in [false, true] {
                    for (batch, broadcast_b) in [(1, false), (3, false), (3, true)] {
                        for accumulate in [false, true] {
                            let g = GemmKernel {
                                batch,
                                m,
                                n,
                                k,
                                a: GemmOperand {
                                    transposed: ta,
                                    batch_stride: m * k,
                                },
                                b: GemmOperand {
                                    transposed: tb,
                                    batch_stride: if broadcast_b { 0 } else { k * n },
                                },
                                alpha: 0.75,
                                accumulate,
                            };
                            let a: Vec<f32> = (0..batch * m * k).map(|_| next()).collect();
                            let bl = if broadcast_b { k * n } else { batch * k * n };
                            let b: Vec<f32> = (0..bl).map(|_| next()).collect();
                            let init: Vec<f32> = (0..batch * m * n).map(|_| next()).collect();
                            let mut want = init.clone();
                            rowmajor(&g, &a, &b, &mut want);
                            let mut got = init.clone();
                            let beta = if accumulate { 1.0 } else { 0.0 };
                            colmajor(&plan(&g), &b, &a, &mut got, g.alpha, beta);
                            for (w, h) in want.iter().zip(&got) {
                                assert!((w - h).abs() <= 1e-6, "{g:?}: {w} vs {h}");
                            }
                        }
                    }
                }
            }
        }
    }
}
