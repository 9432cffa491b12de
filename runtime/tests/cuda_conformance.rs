//! GPU conformance: every kernel kind of the CUDA backend against the CPU runtime on random
//! inputs — every library row program (all-f32 and mixed-precision layouts) against the
//! Cranelift JIT, attention forward and backward (every spec config's shape, both storages)
//! against `cpu::attention`, GEMMs (TF32 and bf16) against a float64 product — and a whole
//! training step of a small model (embedding, LayerNorm, LM head, cross-entropy, backward,
//! AdamW over all parameters) captured as a CUDA graph, replayed, and compared with the same
//! step on the CPU.
//!
//! Needs a GPU: without one every test prints a "skipped" line (`scripts/gpu-check.sh` runs
//! them on a GPU machine, where `KILN_REQUIRE_GPU=1` turns a missing device into a failure).
#![cfg(feature = "cuda")]

use kiln_compiler::kernel::{
    library, AttentionKernel, AttentionMask, DType, GemmKernel, GemmOperand, InputAccess,
    OutputAccess, RowProgram,
};
use kiln_runtime::cpu::attention as cpu_attn;
use kiln_runtime::cpu::jit::{JitKernel, KernelInput};
use kiln_runtime::cuda::arena::{Arena, ArenaLayout};
use kiln_runtime::cuda::codegen::RowLayout;
use kiln_runtime::cuda::device::{Arg, Device};
use kiln_runtime::cuda::exec::{self, AttentionGradPtrs, AttentionPtrs, Exec};
use kiln_runtime::cuda::gemm::{Blas, GemmPrecision};
use kiln_runtime::cuda::graph::Graph;
use kiln_runtime::cuda::{bf16_to_f32, catalog, data, f32_to_bf16, CudaError, Storage};

fn device_or_skip(test: &str) -> Option<Device> {
    match Device::open(0) {
        Ok(d) => Some(d),
        Err(e) => {
            if std::env::var("KILN_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                panic!("KILN_REQUIRE_GPU=1 but no usable GPU: {e}");
            }
            println!("{test}: skipped: no CUDA device ({e})");
            None
        }
    }
}

/// Deterministic pseudo-random numbers (no dependency on `rand`'s stream across versions).
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
    fn normal(&mut self) -> f32 {
        // Sum of uniforms: close enough to normal for test data, and bounded.
        (0..4).map(|_| self.uniform()).sum::<f32>() - 2.0
    }
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.normal() * scale).collect()
    }
}

fn round_bf16(x: &[f32]) -> Vec<f32> {
    x.iter().map(|&v| bf16_to_f32(f32_to_bf16(v))).collect()
}

/// Max over elements of `|got - want| / (atol + rtol·|want|)`; ≤ 1 passes. NaN matches NaN.
fn error_ratio(got: &[f32], want: &[f32], atol: f32, rtol: f32) -> f32 {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .map(|(&g, &w)| {
            if g.is_nan() && w.is_nan() || g == w {
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

/// Host data for one buffer of a launch.
enum HostBuf {
    F(Vec<f32>),
    I(Vec<i32>),
}

/// Upload helper: one device buffer per host buffer, in the given storage.
struct Uploaded<'d> {
    bufs: Vec<kiln_runtime::cuda::device::DeviceBuffer<'d>>,
}

fn upload<'d>(dev: &'d Device, data: &[(HostBuf, Storage)]) -> Result<Uploaded<'d>, CudaError> {
    let mut bufs = vec![];
    for (h, s) in data {
        let b = match (h, s) {
            (HostBuf::F(v), Storage::F32) => {
                let b = dev.alloc(v.len() * 4)?;
                b.write(v)?;
                b
            }
            (HostBuf::F(v), Storage::Bf16) => {
                let bits: Vec<u16> = v.iter().map(|&x| f32_to_bf16(x)).collect();
                let b = dev.alloc(bits.len() * 2)?;
                b.write(&bits)?;
                b
            }
            (HostBuf::I(v), _) => {
                let b = dev.alloc(v.len() * 4)?;
                b.write(v)?;
                b
            }
        };
        bufs.push(b);
    }
    Ok(Uploaded { bufs })
}

fn download_f32(
    b: &kiln_runtime::cuda::device::DeviceBuffer<'_>,
    n: usize,
    s: Storage,
) -> Vec<f32> {
    match s {
        Storage::F32 => {
            let mut v = vec![0f32; n];
            b.read(&mut v).unwrap();
            v
        }
        Storage::Bf16 => {
            let mut v = vec![0u16; n];
            b.read(&mut v).unwrap();
            v.iter().map(|&h| bf16_to_f32(h)).collect()
        }
    }
}

/// Random inputs for a library program, shaped for `rows × cols`.
fn inputs_for(prog: &RowProgram, rows: usize, cols: usize, rng: &mut Rng) -> Vec<HostBuf> {
    prog.inputs
        .iter()
        .map(|decl| {
            let n = decl.access.len(rows, cols).unwrap();
            match (decl.dtype, decl.access) {
                // Labels: some ignored (-1), the rest in range.
                (DType::I32, InputAccess::PerRow) => HostBuf::I(
                    (0..n)
                        .map(|_| (rng.next() % (cols as u32 + 1)) as i32 - 1)
                        .collect(),
                ),
                // q_len, seed, step: positive and at most cols.
                (DType::I32, _) => HostBuf::I(
                    (0..n)
                        .map(|_| 1 + (rng.next() % cols.max(1) as u32) as i32)
                        .collect(),
                ),
                (DType::F32, InputAccess::Scalar) => {
                    HostBuf::F((0..n).map(|_| 0.05 + 0.9 * rng.uniform()).collect())
                }
                (DType::F32, _) => {
                    let mut v = rng.vec(n, 1.0);
                    // Second moments and per-row reciprocal scales are positive.
                    if matches!(decl.name.as_str(), "v" | "rstd" | "rrms") {
                        v.iter_mut().for_each(|x| *x = x.abs() + 0.1);
                    }
                    HostBuf::F(v)
                }
            }
        })
        .collect()
}

#[test]
fn row_programs_match_the_cpu_jit() {
    let Some(dev) = device_or_skip("row_programs_match_the_cpu_jit") else {
        return;
    };
    let ex = Exec::new(&dev).unwrap();
    let mut rng = Rng(1);
    let mut report = vec![];
    for (prog, layout) in catalog::row_kernels() {
        let loaded = ex.row(&prog, &layout).unwrap();
        let mixed = layout != RowLayout::f32(&prog);
        for &(rows, cols) in &[(1, 1), (7, 33), (64, 768), (5, 5000), (300, 64)] {
            let mut host = inputs_for(&prog, rows, cols, &mut rng);
            // bf16-stored inputs: the CPU sees the same rounded values.
            for (h, s) in host.iter_mut().zip(&layout.inputs) {
                if let (HostBuf::F(v), Storage::Bf16) = (h, s) {
                    *v = round_bf16(v);
                }
            }
            // CPU runtime.
            let jit = JitKernel::compile(&prog).unwrap();
            let mut want: Vec<Vec<f32>> = prog
                .outputs
                .iter()
                .map(|o| vec![0f32; o.access.len(rows, cols).unwrap()])
                .collect();
            {
                let ins: Vec<KernelInput> = host
                    .iter()
                    .map(|h| match h {
                        HostBuf::F(v) => KernelInput::F32(v),
                        HostBuf::I(v) => KernelInput::I32(v),
                    })
                    .collect();
                let mut outs: Vec<&mut [f32]> = want.iter_mut().map(|v| v.as_mut_slice()).collect();
                jit.run(&ins, &mut outs, rows, cols).unwrap();
            }
            // GPU.
            let pairs: Vec<(HostBuf, Storage)> = host
                .into_iter()
                .zip(layout.inputs.iter().copied())
                .collect();
            let ins = upload(&dev, &pairs).unwrap();
            let outs: Vec<_> = prog
                .outputs
                .iter()
                .zip(&layout.outputs)
                .map(|(o, s)| {
                    dev.alloc(o.access.len(rows, cols).unwrap() * s.size())
                        .unwrap()
                })
                .collect();
            let scratch_floats = exec::partial_floats(&loaded.kernel, rows, cols, ex.max_grid());
            let scratch = dev.alloc(scratch_floats * 4).unwrap();
            let in_ptrs: Vec<u64> = ins.bufs.iter().map(|b| b.ptr()).collect();
            let out_ptrs: Vec<u64> = outs.iter().map(|b| b.ptr()).collect();
            // SAFETY: buffers sized from the program's accesses for rows × cols, in the layout's
            // storage; scratch sized by partial_floats.
            unsafe { ex.run_row(&loaded, &in_ptrs, &out_ptrs, rows, cols, scratch.ptr()) }.unwrap();
            dev.synchronize().unwrap();
            for (o, decl) in prog.outputs.iter().enumerate() {
                let n = decl.access.len(rows, cols).unwrap();
                let got = download_f32(&outs[o], n, layout.outputs[o]);
                let (atol, rtol) = match (layout.outputs[o], decl.access) {
                    (Storage::Bf16, _) => (1e-2, 1.0 / 128.0),
                    // Sums over rows or columns: different summation order.
                    (_, OutputAccess::ColSum | OutputAccess::Sum) => (1e-3, 1e-4),
                    _ => (1e-5, 2e-5),
                };
                let want_o = if layout.outputs[o] == Storage::Bf16 {
                    round_bf16(&want[o])
                } else {
                    want[o].clone()
                };
                let r = error_ratio(&got, &want_o, atol * (cols as f32).sqrt().max(1.0), rtol);
                report.push(format!(
                    "{:<22} {:<6} {rows:>4}x{cols:<5} {:<10} err/tol {r:.3}",
                    prog.name,
                    if mixed { "mixed" } else { "f32" },
                    decl.name
                ));
                assert!(
                    r <= 1.0,
                    "{} ({}) output `{}` at {rows}x{cols}: error ratio {r}",
                    prog.name,
                    if mixed { "mixed" } else { "f32" },
                    decl.name
                );
            }
        }
    }
    println!("{}", report.join("\n"));
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

#[test]
fn attention_matches_the_cpu_kernel() {
    let Some(dev) = device_or_skip("attention_matches_the_cpu_kernel") else {
        return;
    };
    let ex = Exec::new(&dev).unwrap();
    let mut rng = Rng(2);
    let mut cases: Vec<AttentionKernel> =
        catalog::spec_attention().iter().map(|a| a.kernel).collect();
    // Odd sizes: partial tiles, q_len ≠ kv_len, a head dimension that needs padding, a large one.
    let mut odd = cases[0];
    odd.q_len = 37;
    odd.kv_len = 70;
    odd.head_dim = 20;
    odd.scale = 0.3;
    cases.push(odd);
    let mut big = cases[0];
    big.heads = 2;
    big.kv_heads = 1;
    big.q_len = 130;
    big.kv_len = 130;
    big.head_dim = 256;
    cases.push(big);
    let mut local0 = cases[0];
    local0.mask = AttentionMask::Local { window: 0 }; // every row sees nothing
    cases.push(local0);
    for k in cases {
        for storage in [Storage::F32, Storage::Bf16] {
            let (b, h, hk, t, s, d) = (k.batch, k.heads, k.kv_heads, k.q_len, k.kv_len, k.head_dim);
            let mut q = rng.vec(b * h * t * d, 0.5);
            let mut kk = rng.vec(b * hk * s * d, 0.5);
            let mut v = rng.vec(b * hk * s * d, 1.0);
            let mut dout = rng.vec(b * h * t * d, 1.0);
            if storage == Storage::Bf16 {
                for x in [&mut q, &mut kk, &mut v, &mut dout] {
                    *x = round_bf16(x);
                }
            }
            let bias = k.has_bias.then(|| rng.vec(h * t * s, 1.0));
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
            let mut o = vec![0f32; b * h * t * d];
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

            let up = |x: &[f32]| upload(&dev, &[(HostBuf::F(x.to_vec()), storage)]).unwrap();
            let (gq, gk, gv, gdo) = (up(&q), up(&kk), up(&v), up(&dout));
            let gbias = bias
                .as_ref()
                .map(|x| upload(&dev, &[(HostBuf::F(x.clone()), Storage::F32)]).unwrap());
            let go = dev.alloc(o.len() * storage.size()).unwrap();
            let glse = dev.alloc(lse.len() * 4).unwrap();
            let ptrs = AttentionPtrs {
                q: gq.bufs[0].ptr(),
                k: gk.bufs[0].ptr(),
                v: gv.bufs[0].ptr(),
                bias: gbias.as_ref().map(|x| (x.bufs[0].ptr(), h)),
                o: go.ptr(),
                lse: glse.ptr(),
            };
            // SAFETY: every buffer holds its tensor for these shapes in `storage`.
            unsafe { ex.attention_forward(&k, storage, &ptrs) }.unwrap();
            let gdq = dev.alloc(dq.len() * storage.size()).unwrap();
            let gdk = dev.alloc(dk.len() * storage.size()).unwrap();
            let gdv = dev.alloc(dv.len() * storage.size()).unwrap();
            let gdb = dbias.as_ref().map(|x| dev.alloc(x.len() * 4).unwrap());
            let gd = dev.alloc(lse.len() * 4).unwrap();
            let grads = AttentionGradPtrs {
                d_out: gdo.bufs[0].ptr(),
                dq: gdq.ptr(),
                dk: gdk.ptr(),
                dv: gdv.ptr(),
                dbias: gdb.as_ref().map(|x| x.ptr()),
                d_scratch: gd.ptr(),
            };
            // SAFETY: as above.
            unsafe { ex.attention_backward(&k, storage, &ptrs, &grads) }.unwrap();
            dev.synchronize().unwrap();
            let (atol, rtol) = match storage {
                Storage::F32 => (1e-4, 1e-3),
                Storage::Bf16 => (2e-2, 2e-2),
            };
            let name = format!(
                "{:?} {:?} d={d} t={t} s={s} h={h}/{hk} bias={}",
                storage, k.mask, k.has_bias
            );
            let check = |what: &str, got: Vec<f32>, want: &[f32]| {
                let want = if storage == Storage::Bf16 && what != "lse" && what != "dbias" {
                    round_bf16(want)
                } else {
                    want.to_vec()
                };
                let r = error_ratio(&got, &want, atol, rtol);
                println!("attention {name} {what}: err/tol {r:.3}");
                assert!(r <= 1.0, "attention {name} {what}: error ratio {r}");
            };
            check("o", download_f32(&go, o.len(), storage), &o);
            check("lse", download_f32(&glse, lse.len(), Storage::F32), &lse);
            check("dq", download_f32(&gdq, dq.len(), storage), &dq);
            check("dk", download_f32(&gdk, dk.len(), storage), &dk);
            check("dv", download_f32(&gdv, dv.len(), storage), &dv);
            if let (Some(g), Some(w)) = (&gdb, &dbias) {
                check("dbias", download_f32(g, w.len(), Storage::F32), w);
            }
        }
    }
}

fn gemm_ref(g: &GemmKernel, a: &[f32], b: &[f32], d: &mut [f32], abs: &mut [f32]) {
    for bi in 0..g.batch {
        for i in 0..g.m {
            for j in 0..g.n {
                let (mut s, mut sa) = (0.0f64, 0.0f64);
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
                    sa += (av as f64 * bv as f64).abs();
                }
                let o = bi * g.m * g.n + i * g.n + j;
                d[o] = (g.alpha as f64 * s + if g.accumulate { d[o] as f64 } else { 0.0 }) as f32;
                abs[o] = (g.alpha.abs() as f64 * sa
                    + if g.accumulate { d[o].abs() as f64 } else { 0.0 })
                    as f32;
            }
        }
    }
}

#[test]
fn gemm_matches_a_float64_product() {
    let Some(dev) = device_or_skip("gemm_matches_a_float64_product") else {
        return;
    };
    let blas = Blas::new(&dev).unwrap();
    let mut rng = Rng(3);
    for &(batch, m, n, k) in &[
        (1, 1, 1, 1),
        (1, 64, 96, 32),
        (3, 37, 50, 70),
        (2, 256, 768, 512),
    ] {
        for ta in [false, true] {
            for tb in [false, true] {
                for broadcast in [false, true] {
                    for accumulate in [false, true] {
                        for prec in [
                            GemmPrecision::F32,
                            GemmPrecision::Tf32,
                            GemmPrecision::Bf16 { out: Storage::F32 },
                            GemmPrecision::Bf16 { out: Storage::Bf16 },
                        ] {
                            if matches!(prec, GemmPrecision::Bf16 { out: Storage::Bf16 })
                                && accumulate
                            {
                                continue;
                            }
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
                                    batch_stride: if broadcast { 0 } else { k * n },
                                },
                                alpha: 0.5,
                                accumulate,
                            };
                            let (in_s, out_s, tol) = match prec {
                                GemmPrecision::F32 => (Storage::F32, Storage::F32, 1e-5),
                                GemmPrecision::Tf32 => (Storage::F32, Storage::F32, 2e-3),
                                GemmPrecision::Bf16 { out } => (Storage::Bf16, out, 1e-2),
                            };
                            let mut a = rng.vec(batch * m * k, 1.0);
                            let mut b = rng.vec(if broadcast { k * n } else { batch * k * n }, 1.0);
                            if in_s == Storage::Bf16 {
                                a = round_bf16(&a);
                                b = round_bf16(&b);
                            }
                            let mut d = rng.vec(batch * m * n, 1.0);
                            let ga = upload(
                                &dev,
                                &[
                                    (HostBuf::F(a.clone()), in_s),
                                    (HostBuf::F(b.clone()), in_s),
                                    (HostBuf::F(d.clone()), out_s),
                                ],
                            )
                            .unwrap();
                            let mut abs = vec![0f32; d.len()];
                            gemm_ref(&g, &a, &b, &mut d, &mut abs);
                            // SAFETY: buffers hold A, B, D for this shape in the precision's storage.
                            unsafe {
                                blas.gemm(
                                    &dev,
                                    &g,
                                    prec,
                                    ga.bufs[0].ptr(),
                                    ga.bufs[1].ptr(),
                                    ga.bufs[2].ptr(),
                                )
                            }
                            .unwrap();
                            let got = download_f32(&ga.bufs[2], d.len(), out_s);
                            for ((x, y), s) in got.iter().zip(&d).zip(&abs) {
                                assert!(
                                    (x - y).abs() <= tol * (s + 1e-3),
                                    "{g:?} {prec:?}: {x} vs {y} (scale {s})"
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A small LM step on the GPU (graph-captured) and on the CPU: embedding → LayerNorm → LM head →
/// cross-entropy, its backward, global gradient norm, AdamW over every parameter. Compared after
/// three steps (the graph is replayed with new tokens and learning rates each time).
#[test]
fn training_step_matches_the_cpu_and_replays_as_a_graph() {
    let Some(dev) = device_or_skip("training_step_matches_the_cpu_and_replays_as_a_graph") else {
        return;
    };
    let (vocab, dim, n_tok) = (97usize, 64usize, 48usize);
    let mut rng = Rng(4);
    let emb0 = rng.vec(vocab * dim, 0.5);
    let gamma0: Vec<f32> = (0..dim).map(|_| 1.0 + 0.1 * rng.normal()).collect();
    let beta0 = rng.vec(dim, 0.1);
    let w0 = rng.vec(dim * vocab, 0.2);
    // Parameters live contiguously: [emb | gamma | beta | w], so AdamW is one launch.
    let sizes = [vocab * dim, dim, dim, dim * vocab];
    let n_params: usize = sizes.iter().sum();
    let offs: Vec<usize> = sizes
        .iter()
        .scan(0, |acc, &s| {
            let o = *acc;
            *acc += s;
            Some(o)
        })
        .collect();
    let mut params: Vec<f32> = [emb0, gamma0, beta0, w0].concat();
    let steps: Vec<(Vec<i32>, Vec<i32>, f32)> = (0..3)
        .map(|i| {
            let tok: Vec<i32> = (0..n_tok)
                .map(|_| (rng.next() % vocab as u32) as i32)
                .collect();
            let lab: Vec<i32> = (0..n_tok)
                .map(|_| (rng.next() % (vocab as u32 + 1)) as i32 - 1)
                .collect();
            (tok, lab, 1e-2 * (i + 1) as f32)
        })
        .collect();
    // eps = 1 keeps AdamW's update close to linear in the gradient, so summation-order differences
    // in near-zero gradients cannot flip an update's sign (eps = 1e-8 makes it ±lr).
    let (b1, b2, eps, wd) = (0.9f32, 0.95f32, 1.0f32, 0.1f32);
    // Small enough that clipping is active.
    let max_norm = 0.1f32;
    let params0 = params.clone();

    // ---- CPU reference ----
    let mut m = vec![0f32; n_params];
    let mut v = vec![0f32; n_params];
    let ln = JitKernel::compile(&library::layernorm_fwd(1e-5)).unwrap();
    let ln_b = JitKernel::compile(&library::layernorm_bwd()).unwrap();
    let ce = JitKernel::compile(&library::cross_entropy_fwd()).unwrap();
    let ce_b = JitKernel::compile(&library::cross_entropy_bwd()).unwrap();
    let adam = JitKernel::compile(&library::adamw()).unwrap();
    let mut cpu_losses = vec![];
    for (t, (tok, lab, lr)) in steps.iter().enumerate() {
        let valid = lab.iter().filter(|&&l| l >= 0).count().max(1) as f32;
        let (emb, rest) = params.split_at(offs[1]);
        let gamma = &rest[..dim];
        let beta = &rest[dim..2 * dim];
        let w = &rest[2 * dim..];
        let x: Vec<f32> = tok
            .iter()
            .flat_map(|&t| emb[t as usize * dim..(t as usize + 1) * dim].to_vec())
            .collect();
        let (mut y, mut mean, mut rstd) = (
            vec![0f32; n_tok * dim],
            vec![0f32; n_tok],
            vec![0f32; n_tok],
        );
        ln.run(
            &[
                KernelInput::F32(&x),
                KernelInput::F32(gamma),
                KernelInput::F32(beta),
            ],
            &mut [&mut y, &mut mean, &mut rstd],
            n_tok,
            dim,
        )
        .unwrap();
        let mut logits = vec![0f32; n_tok * vocab];
        for i in 0..n_tok {
            for j in 0..vocab {
                logits[i * vocab + j] = (0..dim).map(|l| y[i * dim + l] * w[l * vocab + j]).sum();
            }
        }
        let (mut loss, mut lse, mut loss_sum) =
            (vec![0f32; n_tok], vec![0f32; n_tok], vec![0f32; 1]);
        ce.run(
            &[
                KernelInput::F32(&logits),
                KernelInput::I32(lab),
                KernelInput::ScalarF32(1.0 / valid),
            ],
            &mut [&mut loss, &mut lse, &mut loss_sum],
            n_tok,
            vocab,
        )
        .unwrap();
        cpu_losses.push(loss_sum[0]);
        let mut dlogits = vec![0f32; n_tok * vocab];
        ce_b.run(
            &[
                KernelInput::F32(&logits),
                KernelInput::F32(&lse),
                KernelInput::I32(lab),
                KernelInput::ScalarF32(1.0 / valid),
            ],
            &mut [&mut dlogits],
            n_tok,
            vocab,
        )
        .unwrap();
        let mut grads = vec![0f32; n_params];
        // dW = yᵀ dlogits; dy = dlogits Wᵀ
        for l in 0..dim {
            for j in 0..vocab {
                grads[offs[3] + l * vocab + j] = (0..n_tok)
                    .map(|i| y[i * dim + l] * dlogits[i * vocab + j])
                    .sum();
            }
        }
        let mut dy = vec![0f32; n_tok * dim];
        for i in 0..n_tok {
            for l in 0..dim {
                dy[i * dim + l] = (0..vocab)
                    .map(|j| dlogits[i * vocab + j] * w[l * vocab + j])
                    .sum();
            }
        }
        let (mut dx, mut dgamma, mut dbeta) =
            (vec![0f32; n_tok * dim], vec![0f32; dim], vec![0f32; dim]);
        ln_b.run(
            &[
                KernelInput::F32(&x),
                KernelInput::F32(&dy),
                KernelInput::F32(gamma),
                KernelInput::F32(&mean),
                KernelInput::F32(&rstd),
            ],
            &mut [&mut dx, &mut dgamma, &mut dbeta],
            n_tok,
            dim,
        )
        .unwrap();
        grads[offs[1]..offs[1] + dim].copy_from_slice(&dgamma);
        grads[offs[2]..offs[2] + dim].copy_from_slice(&dbeta);
        for (i, &t) in tok.iter().enumerate() {
            for l in 0..dim {
                grads[t as usize * dim + l] += dx[i * dim + l];
            }
        }
        let norm = grads
            .iter()
            .map(|g| (*g as f64).powi(2))
            .sum::<f64>()
            .sqrt() as f32;
        let clip = (max_norm / norm.max(1e-6)).min(1.0);
        let step = (t + 1) as i32;
        let bc1 = 1.0 / (1.0 - b1.powi(step));
        let bc2 = 1.0 / (1.0 - b2.powi(step));
        let (mut p1, mut m1, mut v1) = (
            vec![0f32; n_params],
            vec![0f32; n_params],
            vec![0f32; n_params],
        );
        adam.run(
            &[
                KernelInput::F32(&params),
                KernelInput::F32(&grads),
                KernelInput::F32(&m),
                KernelInput::F32(&v),
                KernelInput::ScalarF32(*lr),
                KernelInput::ScalarF32(b1),
                KernelInput::ScalarF32(b2),
                KernelInput::ScalarF32(eps),
                KernelInput::ScalarF32(wd),
                KernelInput::ScalarF32(bc1),
                KernelInput::ScalarF32(bc2),
                KernelInput::ScalarF32(clip),
            ],
            &mut [&mut p1, &mut m1, &mut v1],
            1,
            n_params,
        )
        .unwrap();
        params = p1;
        m = m1;
        v = v1;
    }

    // ---- GPU ----
    let ex = Exec::new(&dev).unwrap();
    let blas = Blas::new(&dev).unwrap();
    let ln_g = ex
        .row(
            &library::layernorm_fwd(1e-5),
            &RowLayout::f32(&library::layernorm_fwd(1e-5)),
        )
        .unwrap();
    let lnb_g = ex
        .row(
            &library::layernorm_bwd(),
            &RowLayout::f32(&library::layernorm_bwd()),
        )
        .unwrap();
    let ce_g = ex
        .row(
            &library::cross_entropy_fwd(),
            &RowLayout::f32(&library::cross_entropy_fwd()),
        )
        .unwrap();
    let ceb_g = ex
        .row(
            &library::cross_entropy_bwd(),
            &RowLayout::f32(&library::cross_entropy_bwd()),
        )
        .unwrap();
    let adam_g = ex
        .row(&library::adamw(), &RowLayout::f32(&library::adamw()))
        .unwrap();
    let data_mod = dev.module(&data::source()).unwrap();
    let emb_fwd = data_mod.function(data::EMBEDDING_FWD_F32).unwrap();
    let emb_bwd = data_mod.function(data::EMBEDDING_BWD_F32).unwrap();

    let mut l = ArenaLayout::new();
    let f = |n: usize| n * 4;
    let r_params = l.push("params", f(n_params)).unwrap();
    let r_grads = l.push("grads", f(n_params)).unwrap();
    let r_m = l.push("m", f(n_params)).unwrap();
    let r_v = l.push("v", f(n_params)).unwrap();
    let r_tok = l.push("tokens", 4 * n_tok).unwrap();
    let r_lab = l.push("labels", 4 * n_tok).unwrap();
    // The embedding gradient's token index (data::embedding_grad_index), uploaded each step.
    let r_uniq = l.push("emb_unique", 4 * n_tok).unwrap();
    let r_offs = l.push("emb_offsets", 4 * (n_tok + 1)).unwrap();
    let r_pos = l.push("emb_positions", 4 * n_tok).unwrap();
    let r_nuniq = l.push("emb_n_unique", 4).unwrap();
    // scalars: [inv_valid, lr, b1, b2, eps, wd, bc1, bc2, clip, max_norm] as f32
    let r_sc = l.push("scalars", f(10)).unwrap();
    let r_x = l.push("x", f(n_tok * dim)).unwrap();
    let r_y = l.push("y", f(n_tok * dim)).unwrap();
    let r_mean = l.push("mean", f(n_tok)).unwrap();
    let r_rstd = l.push("rstd", f(n_tok)).unwrap();
    let r_logits = l.push("logits", f(n_tok * vocab)).unwrap();
    let r_loss = l.push("loss", f(n_tok)).unwrap();
    let r_lse = l.push("lse", f(n_tok)).unwrap();
    let r_lsum = l.push("loss_sum", f(1)).unwrap();
    let r_dlogits = l.push("dlogits", f(n_tok * vocab)).unwrap();
    let r_dy = l.push("dy", f(n_tok * dim)).unwrap();
    let r_dx = l.push("dx", f(n_tok * dim)).unwrap();
    let r_sq = l.push("sumsq", f(1)).unwrap();
    let scratch_floats = [
        exec::partial_floats(&lnb_g.kernel, n_tok, dim, ex.max_grid()),
        exec::partial_floats(&ce_g.kernel, n_tok, vocab, ex.max_grid()),
        data::SUMSQ_PARTS_COUNT as usize,
    ]
    .into_iter()
    .max()
    .unwrap();
    let r_scratch = l.push("scratch", f(scratch_floats)).unwrap();
    let arena = Arena::new(&dev, &l).unwrap();
    let p = |r| arena.ptr(r).unwrap();
    let sc = |i: usize| p(r_sc) + 4 * i as u64;
    let prm = |i: usize| p(r_params) + 4 * offs[i] as u64;
    let grd = |i: usize| p(r_grads) + 4 * offs[i] as u64;
    // SAFETY (all uploads and launches below): every address is a region of the arena sized
    // for the tensor it holds; the programs' buffer rules are respected (no aliasing except
    // AdamW's in-place single-pass update).
    unsafe {
        dev.upload(p(r_params), &params0).unwrap();
        dev.zero(p(r_m), f(n_params)).unwrap();
        dev.zero(p(r_v), f(n_params)).unwrap();
    }
    let record = || -> Result<(), CudaError> {
        unsafe {
            dev.launch(
                &emb_fwd,
                (64, 1, 1),
                (256, 1, 1),
                0,
                &[
                    Arg::Ptr(p(r_tok)),
                    Arg::Ptr(prm(0)),
                    Arg::Ptr(p(r_x)),
                    Arg::I32(n_tok as i32),
                    Arg::I32(dim as i32),
                    Arg::I32(vocab as i32),
                ],
            )?;
            ex.run_row(
                &ln_g,
                &[p(r_x), prm(1), prm(2)],
                &[p(r_y), p(r_mean), p(r_rstd)],
                n_tok,
                dim,
                p(r_scratch),
            )?;
            let head = GemmKernel {
                batch: 1,
                m: n_tok,
                n: vocab,
                k: dim,
                a: GemmOperand {
                    transposed: false,
                    batch_stride: 0,
                },
                b: GemmOperand {
                    transposed: false,
                    batch_stride: 0,
                },
                alpha: 1.0,
                accumulate: false,
            };
            blas.gemm(&dev, &head, GemmPrecision::F32, p(r_y), prm(3), p(r_logits))?;
            ex.run_row(
                &ce_g,
                &[p(r_logits), p(r_lab), sc(0)],
                &[p(r_loss), p(r_lse), p(r_lsum)],
                n_tok,
                vocab,
                p(r_scratch),
            )?;
            ex.run_row(
                &ceb_g,
                &[p(r_logits), p(r_lse), p(r_lab), sc(0)],
                &[p(r_dlogits)],
                n_tok,
                vocab,
                p(r_scratch),
            )?;
            // dW = yᵀ · dlogits  ([dim, n_tok] · [n_tok, vocab])
            let dw = GemmKernel {
                batch: 1,
                m: dim,
                n: vocab,
                k: n_tok,
                a: GemmOperand {
                    transposed: true,
                    batch_stride: 0,
                },
                b: GemmOperand {
                    transposed: false,
                    batch_stride: 0,
                },
                alpha: 1.0,
                accumulate: false,
            };
            blas.gemm(&dev, &dw, GemmPrecision::F32, p(r_y), p(r_dlogits), grd(3))?;
            // dy = dlogits · Wᵀ  ([n_tok, vocab] · [vocab, dim])
            let dyk = GemmKernel {
                batch: 1,
                m: n_tok,
                n: dim,
                k: vocab,
                a: GemmOperand {
                    transposed: false,
                    batch_stride: 0,
                },
                b: GemmOperand {
                    transposed: true,
                    batch_stride: 0,
                },
                alpha: 1.0,
                accumulate: false,
            };
            blas.gemm(
                &dev,
                &dyk,
                GemmPrecision::F32,
                p(r_dlogits),
                prm(3),
                p(r_dy),
            )?;
            ex.run_row(
                &lnb_g,
                &[p(r_x), p(r_dy), prm(1), p(r_mean), p(r_rstd)],
                &[p(r_dx), grd(1), grd(2)],
                n_tok,
                dim,
                p(r_scratch),
            )?;
            dev.zero(grd(0), f(vocab * dim))?;
            dev.launch(
                &emb_bwd,
                (n_tok as u32, 1, 1),
                (256, 1, 1),
                0,
                &[
                    Arg::Ptr(p(r_uniq)),
                    Arg::Ptr(p(r_offs)),
                    Arg::Ptr(p(r_pos)),
                    Arg::Ptr(p(r_nuniq)),
                    Arg::Ptr(p(r_dx)),
                    Arg::Ptr(grd(0)),
                    Arg::I32(dim as i32),
                    Arg::I32(vocab as i32),
                ],
            )?;
            ex.sum_squares(p(r_grads), n_params, p(r_scratch), p(r_sq))?;
            // Global-norm clipping on the device (max norm in scalar slot 9), then AdamW:
            // the whole step is one graph.
            ex.clip_scale(p(r_sq), sc(9), sc(8))?;
            ex.run_row(
                &adam_g,
                &[
                    p(r_params),
                    p(r_grads),
                    p(r_m),
                    p(r_v),
                    sc(1),
                    sc(2),
                    sc(3),
                    sc(4),
                    sc(5),
                    sc(6),
                    sc(7),
                    sc(8),
                ],
                &[p(r_params), p(r_m), p(r_v)],
                1,
                n_params,
                p(r_scratch),
            )?;
            Ok(())
        }
    };
    let step_graph = Graph::capture(&dev, record).unwrap();
    let mut gpu_losses = vec![];
    for (t, (tok, lab, lr)) in steps.iter().enumerate() {
        let valid = lab.iter().filter(|&&l| l >= 0).count().max(1) as f32;
        unsafe {
            dev.upload(p(r_tok), tok).unwrap();
            dev.upload(p(r_lab), lab).unwrap();
            let idx = data::embedding_grad_index(tok, vocab);
            dev.upload(p(r_uniq), &idx.unique).unwrap();
            dev.upload(p(r_offs), &idx.offsets).unwrap();
            dev.upload(p(r_pos), &idx.positions).unwrap();
            dev.upload(p(r_nuniq), &[idx.n_unique]).unwrap();
            let step = (t + 1) as i32;
            // Slot 8 (the clip factor) is written by the graph itself.
            let scal = [
                1.0 / valid,
                *lr,
                b1,
                b2,
                eps,
                wd,
                1.0 / (1.0 - b1.powi(step)),
                1.0 / (1.0 - b2.powi(step)),
                f32::NAN,
                max_norm,
            ];
            dev.upload(sc(0), &scal).unwrap();
        }
        step_graph.replay(&dev).unwrap();
        let mut loss = [0f32];
        unsafe { dev.download(&mut loss, p(r_lsum)).unwrap() };
        gpu_losses.push(loss[0]);
    }
    dev.synchronize().unwrap();
    let mut got = vec![0f32; n_params];
    unsafe { dev.download(&mut got, p(r_params)).unwrap() };
    println!("losses cpu {cpu_losses:?} gpu {gpu_losses:?}");
    for (c, g) in cpu_losses.iter().zip(&gpu_losses) {
        assert!(
            (c - g).abs() <= 1e-4 * c.abs().max(1.0),
            "loss {g} vs cpu {c}"
        );
    }
    let r = error_ratio(&got, &params, 1e-5, 1e-4);
    println!("parameters after 3 steps: err/tol {r:.3}");
    assert!(
        error_ratio(&params, &params0, 1e-5, 1e-4) > 1.0,
        "the steps must move the parameters"
    );
    assert!(
        r <= 1.0,
        "parameters differ from the CPU step: error ratio {r}"
    );
}
