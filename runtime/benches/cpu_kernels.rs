//! Speed of the CPU backend's GEMM calls and attention kernel on the shapes of the small GPTs we train
//! (nanoGPT Shakespeare: B=12, T=64, d=128, 4 heads; and B=8, T=256, d=384, 6 heads).
//!
//! A plain timing binary (no criterion) so that it runs in well under a minute:
//! `cargo bench -p kiln-runtime --bench cpu_kernels` (add `-- gemm` or `-- attn` for one half).
//! The attention section times the tiled kernel against a naive implementation (materialised scores,
//! matmuls through our gemm wrapper, plain softmax) in the same run and prints the ratio.

use std::time::{Duration, Instant};

use kiln_runtime::cpu::attention::{
    attention_backward, attention_forward, AttentionGrads, AttentionInputs, AttentionParams,
    KernelChoice, Mask,
};
use kiln_runtime::cpu::gemm::{gemm, GemmParams, GemmThreads, MatView};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

fn random(n: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// Seconds per call: the fastest of the calls made within `budget` (after two warm-up calls). The
/// fastest rather than the median because the machine is shared: slower calls measure the
/// neighbours, not the code.
fn time_it(budget: Duration, mut f: impl FnMut()) -> f64 {
    f();
    f();
    let start = Instant::now();
    let mut best = f64::INFINITY;
    while start.elapsed() < budget {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
    }
    best
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
        s("probe [64x128]·[128x128]", 64, 128, 128, false, false),
        s("probe [128x128]·[128x128]", 128, 128, 128, false, false),
        s("probe [256x128]·[128x128]", 256, 128, 128, false, false),
        s("probe [384x128]·[128x128]", 384, 128, 128, false, false),
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
        "GEMM, GFLOP/s of the fastest call (rayon pool: {} threads)",
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

/// The straightforward attention a framework's eager mode runs: materialised `[T, T]` scores per
/// (batch, head), batched matmuls through our gemm wrapper, a row softmax with `f32::exp`; the forward
/// keeps `P` for the backward. Causal mask, `H` heads of width `DH` everywhere (no GQA).
struct Naive {
    bh: usize,
    t: usize,
    dh: usize,
    scale: f32,
    p: Vec<f32>,
    dp: Vec<f32>,
}

impl Naive {
    fn new(bh: usize, t: usize, dh: usize) -> Self {
        Naive {
            bh,
            t,
            dh,
            scale: 1.0 / (dh as f32).sqrt(),
            p: vec![0.0; bh * t * t],
            dp: vec![0.0; bh * t * t],
        }
    }

    fn mm(&self, m: usize, n: usize, k: usize, alpha: f32) -> GemmParams {
        GemmParams::new(m, n, k).batched(self.bh).scaled(alpha, 0.0)
    }

    fn forward(&mut self, q: &[f32], k: &[f32], v: &[f32], out: &mut [f32]) {
        let (t, dh) = (self.t, self.dh);
        let x = MatView::row_major(t, dh);
        let tt = MatView::row_major(t, t);
        gemm(
            &self.mm(t, t, dh, self.scale),
            q,
            x,
            k,
            x.t(),
            &mut self.p,
            tt,
        )
        .unwrap();
        self.p.par_chunks_mut(t).enumerate().for_each(|(r, row)| {
            let i = r % t;
            let mx = row[..=i].iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0.0;
            for x in &mut row[..=i] {
                *x = (*x - mx).exp();
                sum += *x;
            }
            let inv = 1.0 / sum;
            row[..=i].iter_mut().for_each(|x| *x *= inv);
            row[i + 1..].fill(0.0);
        });
        gemm(&self.mm(t, dh, t, 1.0), &self.p, tt, v, x, out, x).unwrap();
    }

    #[allow(clippy::too_many_arguments)]
    fn backward(
        &mut self,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        d_out: &[f32],
        dq: &mut [f32],
        dk: &mut [f32],
        dv: &mut [f32],
    ) {
        let (t, dh) = (self.t, self.dh);
        let x = MatView::row_major(t, dh);
        let tt = MatView::row_major(t, t);
        gemm(&self.mm(t, dh, t, 1.0), &self.p, tt.t(), d_out, x, dv, x).unwrap();
        gemm(
            &self.mm(t, t, dh, 1.0),
            d_out,
            x,
            v,
            x.t(),
            &mut self.dp,
            tt,
        )
        .unwrap();
        self.dp
            .par_chunks_mut(t)
            .zip(self.p.par_chunks(t))
            .for_each(|(d, p)| {
                let dsum: f32 = d.iter().zip(p).map(|(a, b)| a * b).sum();
                d.iter_mut().zip(p).for_each(|(d, p)| *d = p * (*d - dsum));
            });
        gemm(&self.mm(t, dh, t, self.scale), &self.dp, tt, k, x, dq, x).unwrap();
        gemm(
            &self.mm(t, dh, t, self.scale),
            &self.dp,
            tt.t(),
            q,
            x,
            dk,
            x,
        )
        .unwrap();
    }
}

/// Fastest fwd and bwd times (seconds) of the kernel (`Auto` and `Scalar`) and of the naive
/// implementation for one causal configuration, after checking that they agree.
struct AttnTimes {
    fwd: f64,
    bwd: f64,
    naive_fwd: f64,
    naive_bwd: f64,
    scalar: f64,
}

fn attention_times(b: usize, h: usize, t: usize, dh: usize, budget: Duration) -> AttnTimes {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let n = b * h * t * dh;
    let q = random(n, &mut rng);
    let k = random(n, &mut rng);
    let v = random(n, &mut rng);
    let d_out = random(n, &mut rng);
    let (mut out, mut lse) = (vec![0.0; n], vec![0.0; b * h * t]);
    let (mut dq, mut dk, mut dv) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
    let x = AttentionInputs {
        q: &q,
        k: &k,
        v: &v,
        bias: None,
    };
    // The two implementations must compute the same thing before their times mean anything.
    {
        let p = AttentionParams::new(b, h, t, dh, Mask::Causal);
        attention_forward(&p, &x, &mut out, &mut lse).unwrap();
        let grads = AttentionGrads {
            dq: &mut dq,
            dk: &mut dk,
            dv: &mut dv,
            dbias: None,
        };
        attention_backward(&p, &x, &out, &lse, &d_out, grads).unwrap();
        let mut naive = Naive::new(b * h, t, dh);
        let (mut o2, mut dq2, mut dk2, mut dv2) =
            (vec![0.0; n], vec![0.0; n], vec![0.0; n], vec![0.0; n]);
        naive.forward(&q, &k, &v, &mut o2);
        naive.backward(&q, &k, &v, &d_out, &mut dq2, &mut dk2, &mut dv2);
        for (name, a, b) in [
            ("out", &out, &o2),
            ("dq", &dq, &dq2),
            ("dk", &dk, &dk2),
            ("dv", &dv, &dv2),
        ] {
            let diff = a
                .iter()
                .zip(b.iter())
                .map(|(x, y)| (x - y).abs())
                .fold(0.0f32, f32::max);
            assert!(diff < 1e-4, "kernel and naive disagree on {name}: {diff}");
        }
    }
    let mut timings = |kernel: KernelChoice, budget: Duration| {
        let mut p = AttentionParams::new(b, h, t, dh, Mask::Causal);
        p.kernel = kernel;
        let fwd = time_it(budget, || {
            attention_forward(&p, &x, &mut out, &mut lse).unwrap();
        });
        let mut bwd_once = || {
            let grads = AttentionGrads {
                dq: &mut dq,
                dk: &mut dk,
                dv: &mut dv,
                dbias: None,
            };
            attention_backward(&p, &x, &out, &lse, &d_out, grads).unwrap();
        };
        let bwd = time_it(budget, &mut bwd_once);
        (fwd, bwd)
    };
    let (fwd, bwd) = timings(KernelChoice::Auto, budget);
    let (sfwd, sbwd) = timings(KernelChoice::Scalar, budget / 3);
    let mut naive = Naive::new(b * h, t, dh);
    let naive_fwd = time_it(budget, || naive.forward(&q, &k, &v, &mut out));
    let naive_bwd = time_it(budget, || {
        naive.backward(&q, &k, &v, &d_out, &mut dq, &mut dk, &mut dv)
    });
    AttnTimes {
        fwd,
        bwd,
        naive_fwd,
        naive_bwd,
        scalar: sfwd + sbwd,
    }
}

fn print_attention_row(label: String, r: &AttnTimes, times: f64) {
    let ms = 1e3 * times;
    println!(
        "{:<26} {:>8.3} {:>8.3} {:>9.3} {:>8.3} {:>8.3} {:>9.3} {:>7.2}x {:>10.3}",
        label,
        r.fwd * ms,
        r.bwd * ms,
        (r.fwd + r.bwd) * ms,
        r.naive_fwd * ms,
        r.naive_bwd * ms,
        (r.naive_fwd + r.naive_bwd) * ms,
        (r.naive_fwd + r.naive_bwd) / (r.fwd + r.bwd),
        r.scalar * ms,
    );
}

fn attention_section() {
    let configs = [(12, 4, 64, 32), (8, 6, 256, 64)];
    let header = || {
        println!(
            "{:<26} {:>8} {:>8} {:>9} {:>8} {:>8} {:>9} {:>8} {:>10}",
            "shape", "fwd", "bwd", "fwd+bwd", "n.fwd", "n.bwd", "n.fwd+bwd", "ratio", "scalar f+b"
        );
    };
    println!(
        "\nAttention, causal, ms per call (fastest call), whole batch on the rayon pool ({} threads); \
         naive = materialised scores + gemm",
        rayon::current_num_threads()
    );
    header();
    for (b, h, t, dh) in configs {
        let budget = Duration::from_millis(if t > 100 { 1500 } else { 600 });
        let r = attention_times(b, h, t, dh, budget);
        print_attention_row(format!("B={b} H={h} T={t} Dh={dh}"), &r, 1.0);
    }
    // Calls on a shared machine are often interrupted, the long ones nearly always; one (batch,
    // head) on one thread is short enough for the fastest call to be an undisturbed one.
    println!(
        "\nSame, one thread, one (batch, head) per call, scaled by B*H (ms for the whole batch)"
    );
    header();
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("a one-thread rayon pool");
    for (b, h, t, dh) in configs {
        let r = one.install(|| attention_times(1, 1, t, dh, Duration::from_millis(400)));
        print_attention_row(format!("B={b} H={h} T={t} Dh={dh}"), &r, (b * h) as f64);
    }
    println!("ratio = naive fwd+bwd time / kernel fwd+bwd time (above 1: the kernel is faster)");
}

fn main() {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average before the run: {}", load.trim());
    let args: Vec<String> = std::env::args().skip(1).collect();
    let want = |s: &str| args.iter().all(|a| a.starts_with('-')) || args.iter().any(|a| a == s);
    if want("gemm") {
        gemm_section();
    }
    if want("attn") {
        attention_section();
    }
    if let Some(i) = args.iter().position(|a| a == "profile") {
        // `profile fwd|bwd B H T DH`: loop one kernel call for ~5 s (for perf record).
        let n: Vec<usize> = args[i + 2..i + 6]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        profile_loop(&args[i + 1], n[0], n[1], n[2], n[3]);
    }
}

fn profile_loop(which: &str, b: usize, h: usize, t: usize, dh: usize) {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let n = b * h * t * dh;
    let (q, k, v, d_out) = (
        random(n, &mut rng),
        random(n, &mut rng),
        random(n, &mut rng),
        random(n, &mut rng),
    );
    let (mut out, mut lse) = (vec![0.0; n], vec![0.0; b * h * t]);
    let (mut dq, mut dk, mut dv) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
    let x = AttentionInputs {
        q: &q,
        k: &k,
        v: &v,
        bias: None,
    };
    let p = AttentionParams::new(b, h, t, dh, Mask::Causal);
    attention_forward(&p, &x, &mut out, &mut lse).unwrap();
    let start = Instant::now();
    let mut calls = 0;
    let mut best = f64::INFINITY;
    while start.elapsed() < Duration::from_secs(3) {
        let t0 = Instant::now();
        if which == "fwd" {
            attention_forward(&p, &x, &mut out, &mut lse).unwrap();
        } else {
            let grads = AttentionGrads {
                dq: &mut dq,
                dk: &mut dk,
                dv: &mut dv,
                dbias: None,
            };
            attention_backward(&p, &x, &out, &lse, &d_out, grads).unwrap();
        }
        best = best.min(t0.elapsed().as_secs_f64());
        calls += 1;
    }
    println!(
        "{which}: {:.3} ms per call on average, {:.3} ms at best, {calls} calls",
        3e3 / calls as f64,
        best * 1e3
    );
}
