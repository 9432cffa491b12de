//! GPU benchmarks of the CUDA backend's kernels at GPT-2-small shapes (B·T = 8192 tokens, d =
//! 768, vocab 50257, 124M parameters, 12 heads of 64 at T = 1024), printed as a table. Run by
//! `scripts/gpu-check.sh` (release build, `--nocapture`). Without a GPU it prints a "skipped"
//! line. Timings are wall-clock around `iters` launches followed by one synchronize, after a
//! warm-up, so they include launch overhead (which is what a step pays without graphs).
#![cfg(feature = "cuda")]

use std::time::Instant;

use kiln_compiler::kernel::{
    library, AttentionKernel, AttentionMask, Direction, GemmKernel, GemmOperand,
};
use kiln_runtime::cuda::codegen::RowLayout;
use kiln_runtime::cuda::device::Device;
use kiln_runtime::cuda::exec::{self, AttentionGradPtrs, AttentionPtrs, Exec};
use kiln_runtime::cuda::gemm::{Blas, GemmPrecision};
use kiln_runtime::cuda::graph::Graph;
use kiln_runtime::cuda::{catalog, CudaError, Storage};

fn time_it(dev: &Device, iters: usize, mut f: impl FnMut() -> Result<(), CudaError>) -> f64 {
    f().unwrap();
    dev.synchronize().unwrap();
    let t = Instant::now();
    for _ in 0..iters {
        f().unwrap();
    }
    dev.synchronize().unwrap();
    t.elapsed().as_secs_f64() / iters as f64
}

#[test]
fn benchmarks() {
    let dev = match Device::open(0) {
        Ok(d) => d,
        Err(e) => {
            if std::env::var("KILN_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                panic!("KILN_REQUIRE_GPU=1 but no usable GPU: {e}");
            }
            println!("benchmarks: skipped: no CUDA device ({e})");
            return;
        }
    };
    let ex = Exec::new(&dev).unwrap();
    let blas = Blas::new(&dev).unwrap();
    let mut rows: Vec<(String, f64, String)> = vec![];
    let (ntok, d, vocab) = (8192usize, 768usize, 50257usize);
    // One big zeroed scratch area reused by every benchmark (values do not matter for timing,
    // but zeros keep every kernel finite).
    let big = dev.alloc(1 << 32).unwrap();
    unsafe { dev.zero(big.ptr(), 1 << 32).unwrap() };
    let at = |bytes: usize| big.ptr() + bytes as u64;

    // Row kernels.
    for (name, prog, rws, cols, layout_mixed) in [
        (
            "layernorm_fwd f32",
            library::layernorm_fwd(1e-5),
            ntok,
            d,
            false,
        ),
        (
            "layernorm_fwd mixed",
            library::layernorm_fwd(1e-5),
            ntok,
            d,
            true,
        ),
        (
            "layernorm_bwd f32",
            library::layernorm_bwd(),
            ntok,
            d,
            false,
        ),
        (
            "cross_entropy_fwd",
            library::cross_entropy_fwd(),
            ntok,
            vocab,
            false,
        ),
        (
            "cross_entropy_bwd",
            library::cross_entropy_bwd(),
            ntok,
            vocab,
            false,
        ),
        (
            "bias_gelu_tanh f32",
            library::bias_gelu_tanh(),
            ntok,
            4 * d,
            false,
        ),
        (
            "bias_gelu_tanh mixed",
            library::bias_gelu_tanh(),
            ntok,
            4 * d,
            true,
        ),
    ] {
        let layout = if layout_mixed {
            RowLayout::bf16_activations(&prog)
        } else {
            RowLayout::f32(&prog)
        };
        let k = ex.row(&prog, &layout).unwrap();
        let mut off = 0usize;
        let mut bytes = 0usize;
        let mut ptr = |n: usize, size: usize| {
            let p = at(off);
            off += (n * size).next_multiple_of(256);
            p
        };
        let ins: Vec<u64> = prog
            .inputs
            .iter()
            .zip(&layout.inputs)
            .map(|(i, s)| {
                let n = i.access.len(rws, cols).unwrap();
                bytes += n * s.size();
                ptr(n, 4)
            })
            .collect();
        let outs: Vec<u64> = prog
            .outputs
            .iter()
            .zip(&layout.outputs)
            .map(|(o, s)| {
                let n = o.access.len(rws, cols).unwrap();
                bytes += n * s.size();
                ptr(n, 4)
            })
            .collect();
        let scratch = ptr(exec::partial_floats(&k.kernel, rws, cols, ex.max_grid()), 4);
        let secs = time_it(&dev, 50, || unsafe {
            ex.run_row(&k, &ins, &outs, rws, cols, scratch)
        });
        rows.push((
            format!("{name} {rws}x{cols}"),
            secs,
            format!("{:.0} GB/s (1 read+write)", bytes as f64 / secs / 1e9),
        ));
    }

    // Fused AdamW over all 124M parameters (one flat launch).
    let n = 124_000_000usize;
    let prog = library::adamw();
    let k = ex.row(&prog, &RowLayout::f32(&prog)).unwrap();
    let (p, g, m, v, s) = (at(0), at(4 * n), at(8 * n), at(12 * n), at(16 * n));
    let scal: Vec<u64> = (0..8).map(|i| s + 4 * i).collect();
    let secs = time_it(&dev, 20, || unsafe {
        ex.run_row(
            &k,
            &[
                p, g, m, v, scal[0], scal[1], scal[2], scal[3], scal[4], scal[5], scal[6], scal[7],
            ],
            &[p, m, v],
            1,
            n,
            0,
        )
    });
    rows.push((
        "adamw f32 124M params".into(),
        secs,
        format!("{:.0} GB/s (28 B/param)", 28.0 * n as f64 / secs / 1e9),
    ));
    let mixed = catalog::adamw_mixed();
    let k = ex.row(&mixed, &catalog::adamw_mixed_layout()).unwrap();
    let pb = at(17 * n);
    let secs = time_it(&dev, 20, || unsafe {
        ex.run_row(
            &k,
            &[
                p, g, m, v, scal[0], scal[1], scal[2], scal[3], scal[4], scal[5], scal[6], scal[7],
            ],
            &[p, m, v, pb],
            1,
            n,
            0,
        )
    });
    rows.push((
        "adamw + bf16 copy 124M".into(),
        secs,
        format!("{:.0} GB/s (30 B/param)", 30.0 * n as f64 / secs / 1e9),
    ));

    // GEMMs: the MLP up-projection of GPT-2 small.
    for (name, prec) in [
        ("gemm tf32", GemmPrecision::Tf32),
        ("gemm bf16", GemmPrecision::Bf16 { out: Storage::Bf16 }),
    ] {
        let gk = GemmKernel {
            batch: 1,
            m: ntok,
            n: 4 * d,
            k: d,
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
        let secs = time_it(&dev, 20, || unsafe {
            blas.gemm(&dev, &gk, prec, at(0), at(1 << 28), at(1 << 29))
        });
        rows.push((
            format!("{name} {}x{}x{}", gk.m, gk.n, gk.k),
            secs,
            format!(
                "{:.0} TFLOP/s",
                2.0 * (gk.m * gk.n * gk.k) as f64 / secs / 1e12
            ),
        ));
    }

    // Attention, GPT-2 small shapes, causal.
    for storage in [Storage::F32, Storage::Bf16] {
        let k = AttentionKernel {
            direction: Direction::Forward,
            batch: 8,
            heads: 12,
            kv_heads: 12,
            q_len: 1024,
            kv_len: 1024,
            head_dim: 64,
            scale: 0.125,
            mask: AttentionMask::Causal,
            has_bias: false,
            key_padding: false,
            layout: kiln_compiler::kernel::AttentionLayout::HEAD_MAJOR,
        };
        let t = 8 * 12 * 1024 * 64 * 4;
        let ptrs = AttentionPtrs {
            q: at(0),
            k: at(t),
            v: at(2 * t),
            bias: None,
            o: at(3 * t),
            lse: at(4 * t),
        };
        let grads = AttentionGradPtrs {
            d_out: at(5 * t),
            dq: at(6 * t),
            dk: at(7 * t),
            dv: at(8 * t),
            dbias: None,
            d_scratch: at(9 * t),
        };
        // Causal: half the score matrix; forward 2 products, backward 5.
        let flops = 2.0 * 8.0 * 12.0 * 1024.0 * 1024.0 * 64.0 / 2.0;
        let secs = time_it(&dev, 10, || unsafe {
            ex.attention_forward(&k, storage, &ptrs)
        });
        rows.push((
            format!("attention fwd {storage:?} 8x12x1024x64"),
            secs,
            format!("{:.1} TFLOP/s", 2.0 * flops / secs / 1e12),
        ));
        let secs = time_it(&dev, 10, || unsafe {
            ex.attention_backward(&k, storage, &ptrs, &grads)
        });
        rows.push((
            format!("attention bwd {storage:?} 8x12x1024x64"),
            secs,
            format!("{:.1} TFLOP/s", 5.0 * flops / secs / 1e12),
        ));
    }

    // Launch overhead: 200 tiny launches, direct vs one graph replay.
    let prog = library::residual_add();
    let k = ex.row(&prog, &RowLayout::f32(&prog)).unwrap();
    let tiny = || -> Result<(), CudaError> {
        for _ in 0..200 {
            unsafe { ex.run_row(&k, &[at(0), at(4096)], &[at(8192)], 1, 256, 0)? };
        }
        Ok(())
    };
    let direct = time_it(&dev, 10, tiny);
    let graph = Graph::capture(&dev, tiny).unwrap();
    let replay = time_it(&dev, 10, || graph.replay(&dev));
    rows.push((
        "200 tiny launches, direct".into(),
        direct,
        format!("{:.2} us/launch", direct / 200.0 * 1e6),
    ));
    rows.push((
        "200 tiny launches, graph".into(),
        replay,
        format!("{:.2} us/launch", replay / 200.0 * 1e6),
    ));

    println!(
        "\n{} (sm_{}{}, {} SMs)",
        dev.info().name,
        dev.info().arch.0,
        dev.info().arch.1,
        dev.info().sm_count
    );
    println!("| {:<44} | {:>10} | {:<26} |", "benchmark", "ms", "rate");
    println!("|{:-<46}|{:->12}|{:-<28}|", "", "", "");
    for (name, secs, rate) in &rows {
        println!("| {:<44} | {:>10.3} | {:<26} |", name, secs * 1e3, rate);
    }
}
