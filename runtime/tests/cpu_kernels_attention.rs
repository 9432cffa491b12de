//! The tiled attention kernel against a naive reference that materialises the scores and accumulates
//! in f64: forward output, logsumexp, and dQ/dK/dV/dBias, for every mask kind, key padding, GQA/MQA,
//! shared and per-head bias, `T` not a multiple of the tile, `T != S`, and `head_dim` in
//! {16, 32, 64, 128} plus odd sizes. The AVX2 and scalar paths are compared with each other, and the
//! kernel's polynomial `2^x` against the exact value. Every case also runs with its operands
//! stored sequence-major (`[batch, len, heads, head_dim]`, all of them and two mixes) and must give
//! bit for bit the head-major results.

use kiln_runtime::cpu::attention::{
    attention_backward, attention_backward_with, attention_forward, attention_forward_with,
    avx2_fma_available, exp2_approx, exp2_approx_slice, AttentionError, AttentionGrads,
    AttentionInputs, AttentionLayout, AttentionParams, HeadLayout, KernelChoice, Mask,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Written from the mask definitions, independently of the kernel's interval logic.
fn visible(p: &AttentionParams, b: usize, i: usize, j: usize) -> bool {
    let pos = i as i64 + p.kv_len as i64 - p.q_len as i64;
    let j = j as i64;
    let by_mask = match p.mask {
        Mask::Full => true,
        Mask::Causal => j <= pos,
        Mask::Banded { window } => pos - (window as i64) < j && j <= pos,
        Mask::PrefixLm { prefix_len } => j <= pos || j < prefix_len[b] as i64,
    };
    let by_padding = p.key_len.is_none_or(|kl| j < kl[b] as i64);
    by_mask && by_padding
}

struct Reference {
    out: Vec<f32>,
    lse: Vec<f32>,
    dq: Vec<f32>,
    dk: Vec<f32>,
    dv: Vec<f32>,
    dbias: Option<Vec<f32>>,
}

fn reference(p: &AttentionParams, x: &AttentionInputs, d_out: &[f32]) -> Reference {
    let (bn, hq, hkv, t, s, dh) = (
        p.batch, p.q_heads, p.kv_heads, p.q_len, p.kv_len, p.head_dim,
    );
    let group = hq / hkv;
    let bias_heads = x.bias.map(|b| b.len() / (t * s));
    let mut out = vec![0.0f64; bn * hq * t * dh];
    let mut lse = vec![0.0f64; bn * hq * t];
    let mut dq = vec![0.0f64; bn * hq * t * dh];
    let mut dk = vec![0.0f64; bn * hkv * s * dh];
    let mut dv = vec![0.0f64; bn * hkv * s * dh];
    let mut dbias = x.bias.map(|b| vec![0.0f64; b.len()]);
    let scale = p.scale as f64;
    for b in 0..bn {
        for h in 0..hq {
            let kvh = h / group;
            let qb = (b * hq + h) * t * dh;
            let kb = (b * hkv + kvh) * s * dh;
            let hb = match bias_heads {
                Some(1) => 0,
                _ => h,
            };
            for i in 0..t {
                let mut sc = vec![f64::NEG_INFINITY; s];
                for (j, scj) in sc.iter_mut().enumerate() {
                    if !visible(p, b, i, j) {
                        continue;
                    }
                    let mut dot = 0.0f64;
                    for d in 0..dh {
                        dot += x.q[qb + i * dh + d] as f64 * x.k[kb + j * dh + d] as f64;
                    }
                    let bias = x.bias.map_or(0.0, |bias| bias[(hb * t + i) * s + j] as f64);
                    *scj = scale * dot + bias;
                }
                let mx = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let li = (b * hq + h) * t + i;
                if mx == f64::NEG_INFINITY {
                    lse[li] = f64::NEG_INFINITY;
                    continue; // zero output, zero gradients
                }
                let sum: f64 = sc.iter().map(|&v| (v - mx).exp()).sum();
                let l = mx + sum.ln();
                lse[li] = l;
                let pr: Vec<f64> = sc.iter().map(|&v| (v - l).exp()).collect();
                for d in 0..dh {
                    out[qb + i * dh + d] =
                        (0..s).map(|j| pr[j] * x.v[kb + j * dh + d] as f64).sum();
                }
                // Backward for this row.
                let go: Vec<f64> = (0..dh).map(|d| d_out[qb + i * dh + d] as f64).collect();
                let dp: Vec<f64> = (0..s)
                    .map(|j| (0..dh).map(|d| go[d] * x.v[kb + j * dh + d] as f64).sum())
                    .collect();
                let dsum: f64 = (0..s).map(|j| pr[j] * dp[j]).sum();
                for j in 0..s {
                    let ds = pr[j] * (dp[j] - dsum);
                    if let Some(db) = dbias.as_mut() {
                        db[(hb * t + i) * s + j] += ds;
                    }
                    for d in 0..dh {
                        dq[qb + i * dh + d] += scale * ds * x.k[kb + j * dh + d] as f64;
                        dk[kb + j * dh + d] += scale * ds * x.q[qb + i * dh + d] as f64;
                        dv[kb + j * dh + d] += pr[j] * go[d];
                    }
                }
            }
        }
    }
    let f = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect::<Vec<f32>>();
    Reference {
        out: f(out),
        lse: f(lse),
        dq: f(dq),
        dk: f(dk),
        dv: f(dv),
        dbias: dbias.map(f),
    }
}

struct Run {
    out: Vec<f32>,
    lse: Vec<f32>,
    dq: Vec<f32>,
    dk: Vec<f32>,
    dv: Vec<f32>,
    dbias: Option<Vec<f32>>,
}

fn run(p: &AttentionParams, x: &AttentionInputs, d_out: &[f32]) -> Run {
    let nq = p.batch * p.q_heads * p.q_len * p.head_dim;
    let nkv = p.batch * p.kv_heads * p.kv_len * p.head_dim;
    // Poison the outputs: the kernel must overwrite every element.
    let mut out = vec![f32::NAN; nq];
    let mut lse = vec![f32::NAN; p.batch * p.q_heads * p.q_len];
    attention_forward(p, x, &mut out, &mut lse).unwrap();
    let mut dq = vec![f32::NAN; nq];
    let mut dk = vec![f32::NAN; nkv];
    let mut dv = vec![f32::NAN; nkv];
    let mut dbias = x.bias.map(|b| vec![f32::NAN; b.len()]);
    attention_backward(
        p,
        x,
        &out,
        &lse,
        d_out,
        AttentionGrads {
            dq: &mut dq,
            dk: &mut dk,
            dv: &mut dv,
            dbias: dbias.as_deref_mut(),
        },
    )
    .unwrap();
    Run {
        out,
        lse,
        dq,
        dk,
        dv,
        dbias,
    }
}

/// Elementwise `|got - want| <= rtol * (|want| + 0.25 * max|want|)`: relative, with a floor at a
/// quarter of the tensor's scale so that entries that cancel to ~0 (a gradient through a row that
/// sees a single key is exactly 0) do not demand impossible precision from f32.
fn assert_close(what: &str, got: &[f32], want: &[f32], rtol: f32, case: &str) {
    assert_eq!(got.len(), want.len(), "{what} length ({case})");
    let scale = want
        .iter()
        .filter(|x| x.is_finite())
        .fold(0.0f32, |m, x| m.max(x.abs()));
    for (e, (g, w)) in got.iter().zip(want).enumerate() {
        if w.is_infinite() {
            assert_eq!(g, w, "{what}[{e}] ({case})");
            continue;
        }
        let tol = rtol * (w.abs() + 0.25 * scale) + 1e-30;
        assert!(
            (g - w).abs() <= tol,
            "{what}[{e}]: got {g}, want {w}, |diff| {} > tol {tol} ({case})",
            (g - w).abs()
        );
    }
}

fn random(n: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

#[derive(Clone, Copy, Debug)]
enum MaskCase {
    Full,
    Causal,
    Banded(usize),
    PrefixLm,
}

#[derive(Clone, Copy, Debug)]
struct Case {
    batch: usize,
    hq: usize,
    hkv: usize,
    t: usize,
    s: usize,
    dh: usize,
    mask: MaskCase,
    padding: bool,
    /// 0: none, 1: shared across heads, 2: per head.
    bias: u8,
}

fn check_case(c: Case, kernel: KernelChoice, seed: u64) -> Run {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let prefix: Vec<usize> = (0..c.batch).map(|_| rng.random_range(0..=c.s)).collect();
    let key_len: Vec<usize> = (0..c.batch).map(|_| rng.random_range(0..=c.s)).collect();
    let mask = match c.mask {
        MaskCase::Full => Mask::Full,
        MaskCase::Causal => Mask::Causal,
        MaskCase::Banded(window) => Mask::Banded { window },
        MaskCase::PrefixLm => Mask::PrefixLm {
            prefix_len: &prefix,
        },
    };
    let p = AttentionParams {
        batch: c.batch,
        q_heads: c.hq,
        kv_heads: c.hkv,
        q_len: c.t,
        kv_len: c.s,
        head_dim: c.dh,
        scale: 1.0 / (c.dh as f32).sqrt(),
        mask,
        key_len: if c.padding { Some(&key_len) } else { None },
        kernel,
    };
    let q = random(c.batch * c.hq * c.t * c.dh, &mut rng);
    let k = random(c.batch * c.hkv * c.s * c.dh, &mut rng);
    let v = random(c.batch * c.hkv * c.s * c.dh, &mut rng);
    let bias_heads = match c.bias {
        0 => 0,
        1 => 1,
        _ => c.hq,
    };
    let bias = random(bias_heads * c.t * c.s, &mut rng);
    let d_out = random(c.batch * c.hq * c.t * c.dh, &mut rng);
    let x = AttentionInputs {
        q: &q,
        k: &k,
        v: &v,
        bias: if c.bias == 0 { None } else { Some(&bias) },
    };
    let want = reference(&p, &x, &d_out);
    let got = run(&p, &x, &d_out);
    let name = format!("{c:?} {kernel:?}");
    let rtol = 1e-5;
    assert_close("out", &got.out, &want.out, rtol, &name);
    assert_close("lse", &got.lse, &want.lse, rtol, &name);
    assert_close("dq", &got.dq, &want.dq, rtol, &name);
    assert_close("dk", &got.dk, &want.dk, rtol, &name);
    assert_close("dv", &got.dv, &want.dv, rtol, &name);
    if let (Some(g), Some(w)) = (&got.dbias, &want.dbias) {
        assert_close("dbias", g, w, rtol, &name);
    }
    for layout in layouts() {
        let strided = run_in(&p, &layout, &x, &d_out);
        let name = format!("{name} {layout:?}");
        assert_eq!(bits(&strided.out), bits(&got.out), "out {name}");
        assert_eq!(bits(&strided.lse), bits(&got.lse), "lse {name}");
        assert_eq!(bits(&strided.dq), bits(&got.dq), "dq {name}");
        assert_eq!(bits(&strided.dk), bits(&got.dk), "dk {name}");
        assert_eq!(bits(&strided.dv), bits(&got.dv), "dv {name}");
        assert_eq!(
            strided.dbias.as_deref().map(bits),
            got.dbias.as_deref().map(bits),
            "dbias {name}"
        );
    }
    got
}

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

/// All operands sequence-major, and two complementary mixes.
fn layouts() -> Vec<AttentionLayout> {
    let (h, s) = (HeadLayout::HeadMajor, HeadLayout::SeqMajor);
    let mix = |a: HeadLayout, b: HeadLayout| AttentionLayout {
        q: a,
        k: b,
        v: a,
        o: b,
        d_o: a,
        dq: b,
        dk: a,
        dv: b,
    };
    vec![mix(s, s), mix(s, h), mix(h, s)]
}

/// [`run`] with the operands stored as `layout`; the results are converted back to head-major.
fn run_in(
    p: &AttentionParams,
    layout: &AttentionLayout,
    x: &AttentionInputs,
    d_out: &[f32],
) -> Run {
    let qs = (p.batch, p.q_heads, p.q_len, p.head_dim);
    let kvs = (p.batch, p.kv_heads, p.kv_len, p.head_dim);
    let (q, k, v) = (
        layout.q.relayout(x.q, qs, false),
        layout.k.relayout(x.k, kvs, false),
        layout.v.relayout(x.v, kvs, false),
    );
    let xs = AttentionInputs {
        q: &q,
        k: &k,
        v: &v,
        bias: x.bias,
    };
    // Poisoned like `run`: every element of every layout must be written.
    let mut out = vec![f32::NAN; q.len()];
    let mut lse = vec![f32::NAN; p.batch * p.q_heads * p.q_len];
    attention_forward_with(p, layout, &xs, &mut out, &mut lse).unwrap();
    let d_out = layout.d_o.relayout(d_out, qs, false);
    let mut dq = vec![f32::NAN; q.len()];
    let mut dk = vec![f32::NAN; k.len()];
    let mut dv = vec![f32::NAN; v.len()];
    let mut dbias = x.bias.map(|b| vec![f32::NAN; b.len()]);
    attention_backward_with(
        p,
        layout,
        &xs,
        &out,
        &lse,
        &d_out,
        AttentionGrads {
            dq: &mut dq,
            dk: &mut dk,
            dv: &mut dv,
            dbias: dbias.as_deref_mut(),
        },
    )
    .unwrap();
    Run {
        out: layout.o.relayout(&out, qs, true),
        lse,
        dq: layout.dq.relayout(&dq, qs, true),
        dk: layout.dk.relayout(&dk, kvs, true),
        dv: layout.dv.relayout(&dv, kvs, true),
        dbias,
    }
}

fn kernels() -> Vec<KernelChoice> {
    let mut k = vec![KernelChoice::Scalar];
    if avx2_fma_available() {
        k.push(KernelChoice::Avx2Fma);
    }
    k
}

#[test]
fn every_mask_kind_and_head_dim_matches_reference() {
    let masks = [
        MaskCase::Full,
        MaskCase::Causal,
        MaskCase::Banded(5),
        MaskCase::Banded(40),
        MaskCase::PrefixLm,
    ];
    let mut seed = 100;
    for (mi, &mask) in masks.iter().enumerate() {
        for (di, &dh) in [16, 32, 64, 128].iter().enumerate() {
            // T not a multiple of the 32-row tile; GQA (4 query heads on 2 kv heads).
            let c = Case {
                batch: 2,
                hq: 4,
                hkv: 2,
                t: 45 + 7 * di,
                s: 45 + 7 * di,
                dh,
                mask,
                padding: (mi + di) % 2 == 1,
                bias: ((mi + di) % 3) as u8,
            };
            for kernel in kernels() {
                check_case(c, kernel, seed);
            }
            seed += 1;
        }
    }
}

#[test]
fn gqa_mqa_cross_lengths_and_odd_head_dims() {
    let cases = [
        // Multi-query: 3 query heads share one kv head; per-head bias.
        Case {
            batch: 2,
            hq: 3,
            hkv: 1,
            t: 33,
            s: 33,
            dh: 24,
            mask: MaskCase::Causal,
            padding: false,
            bias: 2,
        },
        // Cross attention: T != S, full mask with padding.
        Case {
            batch: 3,
            hq: 2,
            hkv: 2,
            t: 17,
            s: 70,
            dh: 8,
            mask: MaskCase::Full,
            padding: true,
            bias: 1,
        },
        // Causal with S > T (bottom-right aligned, like decoding with a cache).
        Case {
            batch: 1,
            hq: 2,
            hkv: 1,
            t: 9,
            s: 50,
            dh: 16,
            mask: MaskCase::Causal,
            padding: false,
            bias: 0,
        },
        // Causal with T > S: the first T-S rows see nothing.
        Case {
            batch: 1,
            hq: 2,
            hkv: 2,
            t: 40,
            s: 12,
            dh: 5,
            mask: MaskCase::Causal,
            padding: false,
            bias: 2,
        },
        // One-row, one-key edge.
        Case {
            batch: 1,
            hq: 1,
            hkv: 1,
            t: 1,
            s: 1,
            dh: 1,
            mask: MaskCase::Causal,
            padding: false,
            bias: 1,
        },
        // Longer sequence: several tiles in both directions, prefix-LM with GQA.
        Case {
            batch: 1,
            hq: 4,
            hkv: 2,
            t: 130,
            s: 130,
            dh: 32,
            mask: MaskCase::PrefixLm,
            padding: true,
            bias: 2,
        },
        Case {
            batch: 1,
            hq: 2,
            hkv: 1,
            t: 100,
            s: 100,
            dh: 16,
            mask: MaskCase::Banded(33),
            padding: false,
            bias: 1,
        },
    ];
    for (n, &c) in cases.iter().enumerate() {
        for kernel in kernels() {
            check_case(c, kernel, 500 + n as u64);
        }
    }
}

#[test]
fn rows_without_visible_keys_give_zeros_not_nan() {
    // Band of width 0 hides everything; key_len = 0 hides a whole batch row.
    for (mask, padding) in [(MaskCase::Banded(0), false), (MaskCase::Causal, true)] {
        let c = Case {
            batch: 3,
            hq: 2,
            hkv: 1,
            t: 20,
            s: 20,
            dh: 16,
            mask,
            padding,
            bias: 2,
        };
        for kernel in kernels() {
            let got = check_case(c, kernel, 900);
            for v in [&got.out, &got.dq, &got.dk, &got.dv] {
                assert!(v.iter().all(|x| x.is_finite()));
            }
            assert!(got
                .lse
                .iter()
                .all(|x| x.is_finite() || *x == f32::NEG_INFINITY));
        }
    }
    // A bias of -inf over a row's every visible key behaves like a mask.
    let (t, dh) = (6, 8);
    let p = AttentionParams::new(1, 1, t, dh, Mask::Causal);
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let q = random(t * dh, &mut rng);
    let k = random(t * dh, &mut rng);
    let v = random(t * dh, &mut rng);
    let d_out = random(t * dh, &mut rng);
    let mut bias = vec![0.0f32; t * t];
    for j in 0..t {
        bias[2 * t + j] = f32::NEG_INFINITY; // row 2 sees nothing
    }
    let x = AttentionInputs {
        q: &q,
        k: &k,
        v: &v,
        bias: Some(&bias),
    };
    let got = run(&p, &x, &d_out);
    assert!(got.out[2 * dh..3 * dh].iter().all(|&o| o == 0.0));
    assert_eq!(got.lse[2], f32::NEG_INFINITY);
    for vv in [&got.out, &got.dq, &got.dk, &got.dv] {
        assert!(vv.iter().all(|x| x.is_finite()));
    }
    assert!(got.dq[2 * dh..3 * dh].iter().all(|&g| g == 0.0));
    let want = reference(&p, &x, &d_out);
    assert_close("out", &got.out, &want.out, 2e-5, "-inf bias");
    assert_close("dk", &got.dk, &want.dk, 2e-5, "-inf bias");
}

#[test]
fn avx2_and_scalar_paths_agree() {
    if !avx2_fma_available() {
        eprintln!("no AVX2+FMA on this CPU: nothing to compare");
        return;
    }
    let c = Case {
        batch: 2,
        hq: 4,
        hkv: 2,
        t: 77,
        s: 77,
        dh: 64,
        mask: MaskCase::PrefixLm,
        padding: true,
        bias: 2,
    };
    let a = check_case(c, KernelChoice::Scalar, 42);
    let b = check_case(c, KernelChoice::Avx2Fma, 42);
    let name = "scalar vs avx2";
    assert_close("out", &b.out, &a.out, 1e-5, name);
    assert_close("lse", &b.lse, &a.lse, 1e-5, name);
    assert_close("dq", &b.dq, &a.dq, 1e-5, name);
    assert_close("dk", &b.dk, &a.dk, 1e-5, name);
    assert_close("dv", &b.dv, &a.dv, 1e-5, name);
    assert_close(
        "dbias",
        b.dbias.as_ref().unwrap(),
        a.dbias.as_ref().unwrap(),
        1e-5,
        name,
    );
}

#[test]
fn exp2_approximation_error_bound() {
    // 2^x over the kernel's working range: 2 million evenly spaced points in [-126, 127], plus a
    // dense sweep of [-1, 1] where the polynomial's own error dominates.
    let mut xs: Vec<f32> = (0..2_000_000)
        .map(|i| -126.0 + 253.0 * i as f32 / 2_000_000.0)
        .collect();
    xs.extend((0..200_000).map(|i| -1.0 + 2.0 * i as f32 / 200_000.0));
    let mut outputs = Vec::new();
    for kernel in kernels() {
        let mut ys = xs.clone();
        exp2_approx_slice(kernel, &mut ys).unwrap();
        outputs.push((kernel, ys));
    }
    let mut worst = 0.0f64;
    for (i, &x) in xs.iter().enumerate() {
        let want = (x as f64).exp2();
        for (kernel, ys) in &outputs {
            let rel = ((ys[i] as f64 - want) / want).abs();
            worst = worst.max(rel);
            assert!(rel <= 1e-6, "{kernel:?}: 2^{x} = {}, want {want}", ys[i]);
        }
        assert_eq!(
            exp2_approx(x),
            outputs[0].1[i],
            "scalar function vs slice at {x}"
        );
    }
    eprintln!("worst relative error of 2^x: {worst:.3e}");
    assert!(worst < 2e-7, "worst relative error {worst}");
    // Edges the kernel depends on: masked scores (-inf) and underflow give exactly 0, 2^0 = 1
    // exactly, NaN propagates, huge inputs stay finite.
    for kernel in kernels() {
        let mut e = vec![
            f32::NEG_INFINITY,
            -1000.0,
            -127.0,
            0.0,
            f32::NAN,
            1000.0,
            -126.0,
        ];
        exp2_approx_slice(kernel, &mut e).unwrap();
        assert_eq!(&e[..4], &[0.0, 0.0, 0.0, 1.0], "{kernel:?}");
        assert!(e[4].is_nan(), "{kernel:?}");
        assert!(e[5].is_finite() && e[5] > 1e38, "{kernel:?}: {}", e[5]);
        assert_eq!(e[6], 2.0f32.powi(-126), "{kernel:?}");
    }
}

#[test]
fn bad_calls_are_errors() {
    let (t, dh) = (4, 8);
    let q = vec![0.0f32; 2 * t * dh];
    let kv = vec![0.0f32; 2 * t * dh];
    let mut out = vec![0.0f32; 2 * t * dh];
    let mut lse = vec![0.0f32; 2 * t];
    let x = AttentionInputs {
        q: &q,
        k: &kv,
        v: &kv,
        bias: None,
    };
    let ok = AttentionParams::new(1, 2, t, dh, Mask::Causal);
    attention_forward(&ok, &x, &mut out, &mut lse).unwrap();

    let mut p = ok;
    p.kv_heads = 3;
    assert!(matches!(
        attention_forward(&p, &x, &mut out, &mut lse),
        Err(AttentionError::InvalidParams(_))
    ));
    let mut p = ok;
    p.head_dim = 7;
    assert!(matches!(
        attention_forward(&p, &x, &mut out, &mut lse),
        Err(AttentionError::WrongLength { name: "q", .. })
    ));
    let short = [0usize; 0];
    let mut p = ok;
    p.key_len = Some(&short);
    assert!(attention_forward(&p, &x, &mut out, &mut lse).is_err());
    let too_long = [t + 1];
    let mut p = ok;
    p.mask = Mask::PrefixLm {
        prefix_len: &too_long,
    };
    assert!(attention_forward(&p, &x, &mut out, &mut lse).is_err());
    let mut p = ok;
    p.scale = f32::NAN;
    assert!(attention_forward(&p, &x, &mut out, &mut lse).is_err());
    let bias = vec![0.0f32; 3 * t * t];
    let xb = AttentionInputs {
        bias: Some(&bias),
        ..x
    };
    assert!(matches!(
        attention_forward(&ok, &xb, &mut out, &mut lse),
        Err(AttentionError::WrongLength { name: "bias", .. })
    ));
    assert!(matches!(
        attention_forward(&ok, &x, &mut out, &mut lse[..1]),
        Err(AttentionError::WrongLength { name: "lse", .. })
    ));
    // dbias without a bias.
    let (mut dq, mut dk, mut dv, mut db) = (out.clone(), kv.clone(), kv.clone(), vec![0.0; t * t]);
    let r = attention_backward(
        &ok,
        &x,
        &out,
        &lse,
        &out,
        AttentionGrads {
            dq: &mut dq,
            dk: &mut dk,
            dv: &mut dv,
            dbias: Some(&mut db),
        },
    );
    assert!(matches!(r, Err(AttentionError::InvalidParams(_))));
    if !avx2_fma_available() {
        let mut p = ok;
        p.kernel = KernelChoice::Avx2Fma;
        assert_eq!(
            attention_forward(&p, &x, &mut out, &mut lse),
            Err(AttentionError::Avx2FmaUnavailable)
        );
    }
}
