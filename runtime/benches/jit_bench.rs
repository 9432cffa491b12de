//! JIT kernels against hand-written Rust (plain loops, and AVX2+FMA intrinsics) in one run:
//! 16M-element `x * sigmoid(x) * z` and LayerNorm forward on [768, 384]. Prints GB/s (bytes that
//! must cross memory: inputs read once, outputs written once) and ratios. Quick (< 1 min).
//!
//! `cargo bench -p kiln-runtime --bench jit_bench`; set `KILN_JIT_DISASM=1` to also print the
//! generated machine code of the two kernels.

use std::hint::black_box;
use std::time::Instant;

use kiln_compiler::kernel::library;
use kiln_runtime::cpu::jit::{debug_listing, JitKernel, JitOptions, KernelInput, Parallelism};

/// A named benchmark closure.
type Variant<'a> = (String, Box<dyn FnMut() + 'a>);

/// Best-of-`rounds` seconds of each variant, timed round-robin so that all variants see the same
/// background load (this machine is shared).
fn race(rounds: usize, variants: &mut [Variant<'_>]) -> Vec<f64> {
    let mut best = vec![f64::INFINITY; variants.len()];
    for (_, f) in variants.iter_mut() {
        f();
    }
    for _ in 0..rounds {
        for (i, (_, f)) in variants.iter_mut().enumerate() {
            let t = Instant::now();
            f();
            best[i] = best[i].min(t.elapsed().as_secs_f64());
        }
    }
    best
}

fn report(name: &str, bytes: f64, secs: f64, base: Option<f64>) -> f64 {
    let gbs = bytes / secs / 1e9;
    match base {
        Some(b) => println!(
            "  {name:<44} {:>8.3} ms {gbs:>7.2} GB/s  {:>5.2}x of AVX2",
            secs * 1e3,
            gbs / b
        ),
        None => println!("  {name:<44} {:>8.3} ms {gbs:>7.2} GB/s", secs * 1e3),
    }
    gbs
}

/// The JIT configurations compared.
fn jit_configs() -> Vec<(String, JitOptions, Parallelism)> {
    let mut v = vec![];
    for unroll in [1, 2, 4] {
        for (par, label) in [
            (Parallelism::Serial, "1 thread"),
            (Parallelism::Auto, "pool"),
        ] {
            v.push((
                format!("JIT unroll {unroll}, {label}"),
                JitOptions { unroll },
                par,
            ));
        }
    }
    v
}

fn silu_mul_plain(x: &[f32], z: &[f32], y: &mut [f32]) {
    for ((y, &x), &z) in y.iter_mut().zip(x).zip(z) {
        *y = x / (1.0 + (-x).exp()) * z;
    }
}

fn mul_plain(x: &[f32], z: &[f32], y: &mut [f32]) {
    for ((y, &x), &z) in y.iter_mut().zip(x).zip(z) {
        *y = x * z;
    }
}

fn layernorm_plain(
    x: &[f32],
    g: &[f32],
    b: &[f32],
    y: &mut [f32],
    mean: &mut [f32],
    rstd: &mut [f32],
    cols: usize,
) {
    for (r, (xr, yr)) in x
        .chunks_exact(cols)
        .zip(y.chunks_exact_mut(cols))
        .enumerate()
    {
        let m = xr.iter().sum::<f32>() / cols as f32;
        let v = xr.iter().map(|&v| (v - m) * (v - m)).sum::<f32>() / cols as f32;
        let s = 1.0 / (v + 1e-5).sqrt();
        for c in 0..cols {
            yr[c] = (xr[c] - m) * s * g[c] + b[c];
        }
        mean[r] = m;
        rstd[r] = s;
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// `e^x` for 8 lanes, the same algorithm as the JIT's clamped exp.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn exp8(x: __m256) -> __m256 {
        let x = _mm256_min_ps(_mm256_set1_ps(88.3), x);
        let x = _mm256_max_ps(_mm256_set1_ps(-87.3), x);
        let magic = _mm256_set1_ps(12_582_912.0);
        let t = _mm256_fmadd_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E), magic);
        let n = _mm256_sub_ps(t, magic);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(355.0 / 512.0), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm256_set1_ps(1.979_035_7e-4);
        for c in [
            1.394_465e-3,
            8.333_497e-3,
            4.166_629_5e-2,
            1.666_666_6e-1,
            0.5,
        ] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        let y = _mm256_add_ps(
            _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r),
            _mm256_set1_ps(1.0),
        );
        let ni = _mm256_sub_epi32(_mm256_castps_si256(t), _mm256_set1_epi32(0x4B40_0000));
        let s = _mm256_slli_epi32(_mm256_add_epi32(ni, _mm256_set1_epi32(127)), 23);
        _mm256_mul_ps(y, _mm256_castsi256_ps(s))
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA; slices of equal length.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn silu_mul(x: &[f32], z: &[f32], y: &mut [f32]) {
        let n = x.len();
        let one = _mm256_set1_ps(1.0);
        let mut i = 0;
        while i + 8 <= n {
            let xv = _mm256_loadu_ps(x.as_ptr().add(i));
            let zv = _mm256_loadu_ps(z.as_ptr().add(i));
            let e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), xv));
            let s = _mm256_div_ps(one, _mm256_add_ps(one, e));
            _mm256_storeu_ps(
                y.as_mut_ptr().add(i),
                _mm256_mul_ps(_mm256_mul_ps(xv, s), zv),
            );
            i += 8;
        }
        for j in i..n {
            y[j] = x[j] / (1.0 + (-x[j]).exp()) * z[j];
        }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// # Safety
    /// AVX2+FMA; `cols % 16 == 0`; buffer lengths consistent with `cols`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn layernorm(
        x: &[f32],
        g: &[f32],
        b: &[f32],
        y: &mut [f32],
        mean: &mut [f32],
        rstd: &mut [f32],
        cols: usize,
    ) {
        let rows = x.len() / cols;
        for r in 0..rows {
            let xr = x.as_ptr().add(r * cols);
            let yr = y.as_mut_ptr().add(r * cols);
            let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            let mut c = 0;
            while c < cols {
                a0 = _mm256_add_ps(a0, _mm256_loadu_ps(xr.add(c)));
                a1 = _mm256_add_ps(a1, _mm256_loadu_ps(xr.add(c + 8)));
                c += 16;
            }
            let m = hsum(_mm256_add_ps(a0, a1)) / cols as f32;
            let mv = _mm256_set1_ps(m);
            let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            let mut c = 0;
            while c < cols {
                let d0 = _mm256_sub_ps(_mm256_loadu_ps(xr.add(c)), mv);
                let d1 = _mm256_sub_ps(_mm256_loadu_ps(xr.add(c + 8)), mv);
                a0 = _mm256_fmadd_ps(d0, d0, a0);
                a1 = _mm256_fmadd_ps(d1, d1, a1);
                c += 16;
            }
            let v = hsum(_mm256_add_ps(a0, a1)) / cols as f32;
            let s = 1.0 / (v + 1e-5).sqrt();
            let sv = _mm256_set1_ps(s);
            let mut c = 0;
            while c < cols {
                for k in [0, 8] {
                    let d = _mm256_sub_ps(_mm256_loadu_ps(xr.add(c + k)), mv);
                    let h = _mm256_mul_ps(d, sv);
                    let o = _mm256_fmadd_ps(
                        h,
                        _mm256_loadu_ps(g.as_ptr().add(c + k)),
                        _mm256_loadu_ps(b.as_ptr().add(c + k)),
                    );
                    _mm256_storeu_ps(yr.add(c + k), o);
                }
                c += 16;
            }
            mean[r] = m;
            rstd[r] = s;
        }
    }
}

fn silu_case(
    n: usize,
    rounds: usize,
    have_avx2: bool,
    configs: &[(String, JitOptions, Parallelism)],
) {
    let x: Vec<f32> = (0..n).map(|i| ((i % 1999) as f32 - 999.0) * 0.01).collect();
    let z: Vec<f32> = (0..n).map(|i| ((i % 997) as f32) * 0.002 - 1.0).collect();
    let bytes = 12.0 * n as f64;
    println!(
        "\nx * sigmoid(x) * z, {n} elements ({} MB moved per call)",
        bytes / 1e6
    );
    let prog = library::swiglu_fwd();
    let kernels: Vec<JitKernel> = configs
        .iter()
        .map(|(_, o, _)| JitKernel::compile_with(&prog, *o).unwrap())
        .collect();
    let mut outs: Vec<Vec<f32>> = (0..3 + configs.len()).map(|_| vec![0.0f32; n]).collect();
    {
        let mut it = outs.iter_mut();
        let (y0, y1, y2) = (it.next().unwrap(), it.next().unwrap(), it.next().unwrap());
        let (x, z) = (&x, &z);
        let mut variants: Vec<Variant<'_>> = vec![
            (
                "plain Rust x*z (bandwidth ceiling)".into(),
                Box::new(move || mul_plain(black_box(x), z, y0)),
            ),
            (
                "plain Rust loop (libm exp)".into(),
                Box::new(move || silu_mul_plain(black_box(x), z, y1)),
            ),
        ];
        if have_avx2 {
            // SAFETY: AVX2 and FMA were detected above.
            variants.push((
                "Rust AVX2+FMA (8 lanes)".into(),
                Box::new(move || unsafe { avx2::silu_mul(black_box(x), z, y2) }),
            ));
        }
        for (((name, _, par), k), y) in configs.iter().zip(&kernels).zip(it) {
            let par = *par;
            variants.push((
                name.clone(),
                Box::new(move || {
                    k.run_with(
                        &[KernelInput::F32(x), KernelInput::F32(z)],
                        &mut [y],
                        1,
                        n,
                        par,
                    )
                    .unwrap()
                }),
            ));
        }
        let names: Vec<String> = variants.iter().map(|v| v.0.clone()).collect();
        let secs = race(rounds, &mut variants);
        let mut avx = None;
        for (name, s) in names.iter().zip(&secs) {
            let g = report(name, bytes, *s, avx);
            if name.starts_with("Rust AVX2") {
                avx = Some(g);
            }
        }
    }
    if have_avx2 {
        let max_rel = outs[3..]
            .iter()
            .flat_map(|y| {
                y.iter()
                    .zip(&outs[2])
                    .map(|(a, b)| ((a - b) / b.abs().max(1e-30)).abs())
            })
            .fold(0.0f32, f32::max);
        println!("  JIT vs AVX2 max relative difference: {max_rel:.1e}");
    }
    drop(outs);
}

/// `KILN_JIT_SWEEP=1`: every code-generation configuration on several library kernels, in cache
/// (for tuning the defaults).
fn sweep(configs: &[(String, JitOptions, Parallelism)]) {
    let (rows, cols) = (64, 1024);
    for prog in [
        library::bias_gelu_erf(),
        library::bias_gelu_tanh(),
        library::gelu_erf_bwd(),
        library::cross_entropy_fwd(),
        library::softmax_causal(),
        library::adamw(),
    ] {
        println!("\n{} [{rows}, {cols}]", prog.name);
        let mut bufs: Vec<Vec<f32>> = vec![];
        let mut ints: Vec<Vec<i32>> = vec![];
        for d in &prog.inputs {
            let n = d.access.len(rows, cols).unwrap();
            bufs.push(
                (0..n)
                    .map(|i| ((i * 7919 % 1000) as f32) * 0.002 - 1.0)
                    .collect(),
            );
            ints.push(match d.name.as_str() {
                "q_len" => vec![cols as i32],
                _ => (0..n).map(|i| (i % cols) as i32).collect(),
            });
        }
        let inputs: Vec<KernelInput<'_>> = prog
            .inputs
            .iter()
            .enumerate()
            .map(|(j, d)| match d.dtype {
                kiln_compiler::kernel::DType::F32 => KernelInput::F32(&bufs[j]),
                kiln_compiler::kernel::DType::I32 => KernelInput::I32(&ints[j]),
            })
            .collect();
        let mut outs: Vec<Vec<Vec<f32>>> = configs
            .iter()
            .map(|_| {
                prog.outputs
                    .iter()
                    .map(|o| vec![0.0; o.access.len(rows, cols).unwrap()])
                    .collect()
            })
            .collect();
        let kernels: Vec<JitKernel> = configs
            .iter()
            .map(|(_, o, _)| JitKernel::compile_with(&prog, *o).unwrap())
            .collect();
        let inputs = &inputs;
        let mut variants: Vec<Variant<'_>> = vec![];
        for (((name, _, par), k), o) in configs.iter().zip(&kernels).zip(outs.iter_mut()) {
            let par = *par;
            variants.push((
                name.clone(),
                Box::new(move || {
                    let mut views: Vec<&mut [f32]> =
                        o.iter_mut().map(|v| v.as_mut_slice()).collect();
                    k.run_with(inputs, &mut views, rows, cols, par).unwrap()
                }),
            ));
        }
        let names: Vec<String> = variants.iter().map(|v| v.0.clone()).collect();
        let secs = race(200, &mut variants);
        for (name, s) in names.iter().zip(&secs) {
            println!("  {name:<44} {:>8.1} us", s * 1e6);
        }
    }
}

fn main() {
    let have_avx2 = cfg!(target_arch = "x86_64")
        && std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("fma");
    println!("threads in pool: {}", rayon::current_num_threads());

    if std::env::var_os("KILN_JIT_DISASM").is_some() {
        for prog in [
            library::swiglu_fwd(),
            library::layernorm_fwd(1e-5),
            library::softmax_causal(),
        ] {
            let (_, asm) = debug_listing(&prog, JitOptions::default()).unwrap();
            println!("==== {} ====\n{asm}", prog.name);
        }
    }

    if std::env::var_os("KILN_JIT_SWEEP").is_some() {
        sweep(&jit_configs());
        return;
    }

    // ---- x * sigmoid(x) * z: 16M elements (memory-bound), then 64K (in cache) ----
    let configs = jit_configs();
    for (n, rounds) in [(16usize << 20, 5), (1 << 16, 400)] {
        silu_case(n, rounds, have_avx2, &configs);
    }

    // ---- LayerNorm forward on [768, 384] ----
    let (rows, cols) = (768, 384);
    let x: Vec<f32> = (0..rows * cols)
        .map(|i| ((i * 7919 % 1000) as f32) * 0.004 - 2.0)
        .collect();
    let g: Vec<f32> = (0..cols).map(|i| 1.0 + i as f32 * 1e-3).collect();
    let b: Vec<f32> = (0..cols).map(|i| i as f32 * 1e-3).collect();
    let bytes = 8.0 * (rows * cols) as f64;
    println!(
        "\nLayerNorm forward [{rows}, {cols}] ({} MB moved per call)",
        bytes / 1e6
    );
    let prog = library::layernorm_fwd(1e-5);
    let kernels: Vec<JitKernel> = configs
        .iter()
        .map(|(_, o, _)| JitKernel::compile_with(&prog, *o).unwrap())
        .collect();
    let mut outs: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = (0..2 + configs.len())
        .map(|_| {
            (
                vec![0.0f32; rows * cols],
                vec![0.0f32; rows],
                vec![0.0f32; rows],
            )
        })
        .collect();
    {
        let mut it = outs.iter_mut();
        let (o0, o1) = (it.next().unwrap(), it.next().unwrap());
        let (x, g, b) = (&x, &g, &b);
        let mut variants: Vec<Variant<'_>> = vec![(
            "plain Rust loops".into(),
            Box::new(move || {
                layernorm_plain(black_box(x), g, b, &mut o0.0, &mut o0.1, &mut o0.2, cols)
            }),
        )];
        if have_avx2 {
            // SAFETY: AVX2 and FMA were detected above; cols is a multiple of 16.
            variants.push((
                "Rust AVX2+FMA (8 lanes)".into(),
                Box::new(move || unsafe {
                    avx2::layernorm(black_box(x), g, b, &mut o1.0, &mut o1.1, &mut o1.2, cols)
                }),
            ));
        }
        for (((name, _, par), k), o) in configs.iter().zip(&kernels).zip(it) {
            let par = *par;
            variants.push((
                name.clone(),
                Box::new(move || {
                    k.run_with(
                        &[
                            KernelInput::F32(x),
                            KernelInput::F32(g),
                            KernelInput::F32(b),
                        ],
                        &mut [&mut o.0, &mut o.1, &mut o.2],
                        rows,
                        cols,
                        par,
                    )
                    .unwrap()
                }),
            ));
        }
        let names: Vec<String> = variants.iter().map(|v| v.0.clone()).collect();
        let secs = race(300, &mut variants);
        let mut avx = None;
        for (name, s) in names.iter().zip(&secs) {
            let gb = report(name, bytes, *s, avx);
            if name.starts_with("Rust AVX2") {
                avx = Some(gb);
            }
        }
    }
    if have_avx2 {
        let max_abs = outs[2..]
            .iter()
            .flat_map(|o| o.0.iter().zip(&outs[1].0).map(|(a, b)| (a - b).abs()))
            .fold(0.0f32, f32::max);
        println!("  JIT vs AVX2 max absolute difference: {max_abs:.1e}");
    }
    let t = Instant::now();
    let _ = JitKernel::compile(&prog).unwrap();
    println!(
        "\ncompile time, layernorm_fwd: {:.2} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
}
