//! Speed of the CPU backend's GEMM calls and attention kernel on the shapes of the small GPTs we train
//! (nanoGPT Shakespeare: B=12, T=64, d=128, 4 heads; and B=8, T=256, d=384, 6 heads).
//!
//! A plain timing binary (no criterion) so that it runs in well under a minute:
//! `cargo bench -p kiln-runtime --bench cpu_kernels` (add `-- gemm` or `-- attn` for one half).
//! The attention section times the tiled kernel against a naive implementation (materialised scores,
//! matmuls through our gemm wrapper, plain softmax) in the same run and prints the ratio.

use std::time::{Duration, Instant};

use kiln_runtime::cpu::gemm::{gemm, GemmParams, GemmThreads, MatView};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn random(n: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// Median seconds per call over several batches of calls, each batch about `budget / 7` long.
fn time_it(budget: Duration, mut f: impl FnMut()) -> f64 {
    f(); // warm caches, rayon, lazily built tables
    let start = Instant::now();
    let mut calls = 0u64;
    while start.elapsed() < budget / 20 {
        f();
        calls += 1;
    }
    let per_batch = ((calls as f64) * 20.0 / 7.0 / 1.0).max(1.0) as u64 / 3 + 1;
    let mut samples = Vec::new();
    for _ in 0..7 {
        let t = Instant::now();
        for _ in 0..per_batch {
            f();
        }
        samples.push(t.elapsed().as_secs_f64() / per_batch as f64);
    }
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    samples[3]
}

struct Shape {
    name: &'static str,
    batch: usize,
    m: usize,
    n: usize,
    k: usize,
    trans_a: bool,
    trans_b: bool,
    bcast_b: bool,
}

fn gemm_section() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let s = |name, m, n, k, trans_a, trans_b| Shape {
        name,
        batch: 1,
        m,
        n,
        k,
        trans_a,
        trans_b,
        bcast_b: false,
    };
    let shapes = [
        s(
            "small fwd qkv   X[768x128]·W[128x384]",
            768,
            384,
            128,
            false,
            false,
        ),
        s(
            "small fwd mlp   X[768x128]·W[128x512]",
            768,
            512,
            128,
            false,
            false,
        ),
        s(
            "small fwd down  X[768x512]·W[512x128]",
            768,
            128,
            512,
            false,
            false,
        ),
        s(
            "small fwd proj  X[768x128]·W[128x128]",
            768,
            128,
            128,
            false,
            false,
        ),
        s("small bwd dX    dY[768x384]·Wᵀ", 768, 128, 384, false, true),
        s("small bwd dW    Xᵀ·dY[768x384]", 128, 384, 768, true, false),
        s("small bwd dW    Xᵀ·dY[768x512]", 128, 512, 768, true, false),
        s("small bwd dW    Hᵀ·dY[768x128]", 512, 128, 768, true, false),
        s(
            "large fwd qkv   X[2048x384]·W[384x1152]",
            2048,
            1152,
            384,
            false,
            false,
        ),
        s(
            "large fwd down  X[2048x1536]·W[1536x384]",
            2048,
            384,
            1536,
            false,
            false,
        ),
        s(
            "large bwd dX    dY[2048x1152]·Wᵀ",
            2048,
            384,
            1152,
            false,
            true,
        ),
        s(
            "large bwd dW    Xᵀ·dY[2048x1152]",
            384,
            1152,
            2048,
            true,
            false,
        ),
        s(
            "lm head small   X[768x128]·Eᵀ[128x65]",
            768,
            65,
            128,
            false,
            true,
        ),
        Shape {
            name: "attn QKᵀ 48x[64x32]·[32x64]",
            batch: 48,
            m: 64,
            n: 64,
            k: 32,
            trans_a: false,
            trans_b: true,
            bcast_b: false,
        },
        Shape {
            name: "attn QKᵀ 48x[256x64]·[64x256]",
            batch: 48,
            m: 256,
            n: 256,
            k: 64,
            trans_a: false,
            trans_b: true,
            bcast_b: false,
        },
        Shape {
            name: "bcast rhs 12x[64x128]·W[128x384]",
            batch: 12,
            m: 64,
            n: 384,
            k: 128,
            trans_a: false,
            trans_b: false,
            bcast_b: true,
        },
    ];
    println!(
        "GEMM, GFLOP/s (rayon pool: {} threads)",
        rayon::current_num_threads()
    );
    println!(
        "{:<42} {:>9} {:>9} {:>9}   Auto picks",
        "shape", "1 thread", "2 threads", "Auto"
    );
    for sh in &shapes {
        let a_view = if sh.trans_a {
            MatView::row_major(sh.k, sh.m).t()
        } else {
            MatView::row_major(sh.m, sh.k)
        };
        let mut b_view = if sh.trans_b {
            MatView::row_major(sh.n, sh.k).t()
        } else {
            MatView::row_major(sh.k, sh.n)
        };
        if sh.bcast_b {
            b_view = b_view.broadcast();
        }
        let b_batches = if sh.bcast_b { 1 } else { sh.batch };
        let a = random(sh.batch * sh.m * sh.k, &mut rng);
        let b = random(b_batches * sh.k * sh.n, &mut rng);
        let mut c = vec![0.0f32; sh.batch * sh.m * sh.n];
        let c_view = MatView::row_major(sh.m, sh.n);
        let mut rates = Vec::new();
        for threads in [
            GemmThreads::Single,
            GemmThreads::Rayon(2),
            GemmThreads::Auto,
        ] {
            let p = GemmParams::new(sh.m, sh.n, sh.k)
                .batched(sh.batch)
                .with_threads(threads);
            let secs = time_it(Duration::from_millis(300), || {
                gemm(&p, &a, a_view, &b, b_view, &mut c, c_view).unwrap();
            });
            rates.push(p.flops() / secs / 1e9);
        }
        let pick = if (rates[2] - rates[0]).abs() < (rates[2] - rates[1]).abs() {
            "~1"
        } else {
            "~2"
        };
        println!(
            "{:<42} {:>9.1} {:>9.1} {:>9.1}   {}",
            sh.name, rates[0], rates[1], rates[2], pick
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let want = |s: &str| args.iter().all(|a| a.starts_with('-')) || args.iter().any(|a| a == s);
    if want("gemm") {
        gemm_section();
    }
}
