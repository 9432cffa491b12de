//! The strided GEMM wrapper against a plain triple loop (f64 accumulation) on random shapes: every
//! transpose combination, offsets and padded leading dimensions, batches with broadcast operands,
//! alpha/beta, every threading choice; plus the shape errors.

use kiln_runtime::cpu::gemm::{gemm, sgemm, GemmError, GemmParams, GemmThreads, MatView, Trans};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn idx(v: MatView, b: usize, i: usize, j: usize) -> usize {
    v.offset + b * v.batch_stride + i * v.row_stride + j * v.col_stride
}

#[allow(clippy::too_many_arguments)]
fn naive(
    p: &GemmParams,
    a: &[f32],
    av: MatView,
    b: &[f32],
    bv: MatView,
    c: &mut [f32],
    cv: MatView,
) {
    for bi in 0..p.batch {
        for i in 0..p.m {
            for j in 0..p.n {
                let mut acc = 0.0f64;
                for k in 0..p.k {
                    acc += a[idx(av, bi, i, k)] as f64 * b[idx(bv, bi, k, j)] as f64;
                }
                let ci = idx(cv, bi, i, j);
                let old = if p.beta == 0.0 {
                    0.0
                } else {
                    p.beta as f64 * c[ci] as f64
                };
                c[ci] = (p.alpha as f64 * acc + old) as f32;
            }
        }
    }
}

fn random(n: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// A view of an operand that enters the product as `[rows, cols]`, stored transposed or not, with a
/// random offset and padded leading dimension; returns the view and the slice length it needs.
fn make_view(
    rows: usize,
    cols: usize,
    batch: usize,
    transposed: bool,
    broadcast: bool,
    rng: &mut ChaCha8Rng,
) -> (MatView, usize) {
    let offset = rng.random_range(0..5);
    let (srows, scols) = if transposed {
        (cols, rows)
    } else {
        (rows, cols)
    };
    let ld = scols + rng.random_range(0..3);
    let mat = srows * ld;
    let stored = MatView {
        offset,
        row_stride: ld,
        col_stride: 1,
        batch_stride: if broadcast {
            0
        } else {
            mat + rng.random_range(0..4)
        },
    };
    let view = if transposed { stored.t() } else { stored };
    let batches = if broadcast { 1 } else { batch };
    (view, offset + batches * (mat + 4) + 1)
}

fn max_rel_err(got: &[f32], want: &[f32]) -> f32 {
    let scale = want.iter().fold(1e-3f32, |m, x| m.max(x.abs()));
    got.iter()
        .zip(want)
        .map(|(g, w)| (g - w).abs() / scale)
        .fold(0.0, f32::max)
}

#[test]
fn random_shapes_all_transposes_batches_and_threads() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut cases = 0;
    for round in 0..60 {
        let batch = if round % 3 == 0 {
            rng.random_range(2..5)
        } else {
            1
        };
        let (m, n, k) = if round % 10 == 9 {
            // Large enough to cross the threading threshold.
            (
                rng.random_range(100..200),
                rng.random_range(100..200),
                rng.random_range(100..200),
            )
        } else {
            (
                rng.random_range(1..40),
                rng.random_range(1..40),
                rng.random_range(1..40),
            )
        };
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            let bcast_a = batch > 1 && rng.random_bool(0.25);
            let bcast_b = batch > 1 && !bcast_a && rng.random_bool(0.5);
            let (av, alen) = make_view(m, k, batch, ta, bcast_a, &mut rng);
            let (bv, blen) = make_view(k, n, batch, tb, bcast_b, &mut rng);
            let (cv, clen) = make_view(m, n, batch, rng.random_bool(0.2), false, &mut rng);
            let a = random(alen, &mut rng);
            let b = random(blen, &mut rng);
            let c0 = random(clen, &mut rng);
            let (alpha, beta) = match rng.random_range(0..3) {
                0 => (1.0, 0.0),
                1 => (0.5, 1.0),
                _ => (-1.5, 0.25),
            };
            let threads = [
                GemmThreads::Single,
                GemmThreads::Rayon(2),
                GemmThreads::Auto,
            ][rng.random_range(0..3)];
            let p = GemmParams::new(m, n, k)
                .batched(batch)
                .scaled(alpha, beta)
                .with_threads(threads);
            let mut want = c0.clone();
            naive(&p, &a, av, &b, bv, &mut want, cv);
            let mut got = c0.clone();
            gemm(&p, &a, av, &b, bv, &mut got, cv).unwrap();
            let err = max_rel_err(&got, &want);
            assert!(
                err < 1e-5,
                "m={m} n={n} k={k} batch={batch} ta={ta} tb={tb} bcast=({bcast_a},{bcast_b}) \
                 alpha={alpha} beta={beta} {threads:?}: error {err}"
            );
            // Elements of C outside the view are untouched.
            let mut touched = vec![false; clen];
            for bi in 0..batch {
                for i in 0..m {
                    for j in 0..n {
                        touched[idx(cv, bi, i, j)] = true;
                    }
                }
            }
            for (e, t) in touched.iter().enumerate() {
                if !t {
                    assert_eq!(got[e], c0[e], "element {e} outside C was written");
                }
            }
            cases += 1;
        }
    }
    assert_eq!(cases, 240);
}

#[test]
fn threading_choices_agree_on_gpt_shapes() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    // Xᵀ·dY for a weight gradient: [128 x 192] = [192 x 128]ᵀ · [192 x 192].
    let (m, n, k) = (128, 192, 192);
    let a = random(k * m, &mut rng);
    let b = random(k * n, &mut rng);
    let av = MatView::row_major(k, m).t();
    let bv = MatView::row_major(k, n);
    let cv = MatView::row_major(m, n);
    let mut want = vec![0.0; m * n];
    naive(&GemmParams::new(m, n, k), &a, av, &b, bv, &mut want, cv);
    for threads in [
        GemmThreads::Single,
        GemmThreads::Rayon(0),
        GemmThreads::Rayon(2),
        GemmThreads::Auto,
    ] {
        let mut got = vec![f32::NAN; m * n]; // beta = 0 must not read C
        gemm(
            &GemmParams::new(m, n, k).with_threads(threads),
            &a,
            av,
            &b,
            bv,
            &mut got,
            cv,
        )
        .unwrap();
        assert!(max_rel_err(&got, &want) < 1e-5, "{threads:?}");
    }
}

#[test]
fn many_small_batches_with_broadcast_rhs() {
    // 48 small products sharing one rhs: the batch-parallel path.
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let (batch, m, n, k) = (48, 24, 16, 8);
    let a = random(batch * m * k, &mut rng);
    let b = random(k * n, &mut rng);
    let av = MatView::row_major(m, k);
    let bv = MatView::row_major(k, n).broadcast();
    let cv = MatView::row_major(m, n);
    for threads in [
        GemmThreads::Auto,
        GemmThreads::Rayon(2),
        GemmThreads::Single,
    ] {
        let p = GemmParams::new(m, n, k)
            .batched(batch)
            .with_threads(threads);
        let mut want = vec![0.0; batch * m * n];
        naive(&p, &a, av, &b, bv, &mut want, cv);
        let mut got = vec![0.0; batch * m * n];
        gemm(&p, &a, av, &b, bv, &mut got, cv).unwrap();
        assert!(max_rel_err(&got, &want) < 1e-5, "{threads:?}");
    }
}

#[test]
fn blas_style_sgemm_matches_naive() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let (m, n, k) = (13, 9, 17);
    for (ta, tb) in [
        (Trans::No, Trans::No),
        (Trans::No, Trans::Yes),
        (Trans::Yes, Trans::No),
        (Trans::Yes, Trans::Yes),
    ] {
        let (ar, ac) = if ta == Trans::Yes { (k, m) } else { (m, k) };
        let (br, bc) = if tb == Trans::Yes { (n, k) } else { (k, n) };
        let (lda, ldb, ldc) = (ac + 2, bc + 1, n + 3);
        let a = random(ar * lda, &mut rng);
        let b = random(br * ldb, &mut rng);
        let c0 = random(m * ldc, &mut rng);
        let mut got = c0.clone();
        sgemm(ta, tb, m, n, k, 0.75, &a, lda, &b, ldb, -0.5, &mut got, ldc).unwrap();
        let view = |ld: usize, t: Trans| {
            let v = MatView {
                offset: 0,
                row_stride: ld,
                col_stride: 1,
                batch_stride: 0,
            };
            if t == Trans::Yes {
                v.t()
            } else {
                v
            }
        };
        let mut want = c0.clone();
        naive(
            &GemmParams::new(m, n, k).scaled(0.75, -0.5),
            &a,
            view(lda, ta),
            &b,
            view(ldb, tb),
            &mut want,
            view(ldc, Trans::No),
        );
        assert!(max_rel_err(&got, &want) < 1e-5, "{ta:?} {tb:?}");
    }
}

#[test]
fn empty_inner_dimension_only_scales_c() {
    let mut c = vec![2.0f32, f32::NAN, 4.0, 8.0];
    let p = GemmParams::new(2, 2, 0).scaled(1.0, 0.5);
    gemm(
        &p,
        &[],
        MatView::row_major(2, 0),
        &[],
        MatView::row_major(0, 2),
        &mut c,
        MatView::row_major(2, 2),
    )
    .unwrap();
    assert_eq!(c[0], 1.0);
    assert!(c[1].is_nan());
    assert_eq!(&c[2..], &[2.0, 4.0]);
    let p = GemmParams::new(2, 2, 0);
    gemm(
        &p,
        &[],
        MatView::row_major(2, 0),
        &[],
        MatView::row_major(0, 2),
        &mut c,
        MatView::row_major(2, 2),
    )
    .unwrap();
    assert_eq!(c, vec![0.0; 4]);
}

#[test]
fn bad_shapes_are_errors() {
    let a = vec![1.0f32; 6];
    let b = vec![1.0f32; 6];
    let mut c = vec![0.0f32; 4];
    let p = GemmParams::new(2, 2, 3);
    // A too short for [2 x 4].
    let err = gemm(
        &GemmParams::new(2, 2, 4),
        &a,
        MatView::row_major(2, 4),
        &b,
        MatView::row_major(4, 2),
        &mut c,
        MatView::row_major(2, 2),
    )
    .unwrap_err();
    assert!(
        matches!(err, GemmError::OutOfBounds { operand: "A", .. }),
        "{err}"
    );
    // Off by exactly one: a [2 x 3] view at offset 1 reaches index 6 of a 6-element slice.
    let err = gemm(
        &p,
        &a,
        MatView::row_major(2, 3).with_offset(1),
        &b,
        MatView::row_major(3, 2),
        &mut c,
        MatView::row_major(2, 2),
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            GemmError::OutOfBounds {
                operand: "A",
                needed: 6,
                len: 6,
                ..
            }
        ),
        "{err}"
    );
    // Output rows overlap (row stride 1 with column stride 1).
    let overlapping = MatView {
        offset: 0,
        row_stride: 1,
        col_stride: 1,
        batch_stride: 0,
    };
    let err = gemm(
        &p,
        &a,
        MatView::row_major(2, 3),
        &b,
        MatView::row_major(3, 2),
        &mut c,
        overlapping,
    )
    .unwrap_err();
    assert!(matches!(err, GemmError::OverlappingOutput { .. }), "{err}");
    // A broadcast output with batch > 1 would race.
    let err = gemm(
        &p.batched(2),
        &a,
        MatView::row_major(2, 3).broadcast(),
        &b,
        MatView::row_major(3, 2).broadcast(),
        &mut c,
        MatView::row_major(2, 2).broadcast(),
    )
    .unwrap_err();
    assert!(matches!(err, GemmError::OverlappingOutput { .. }), "{err}");
    // Strides that overflow.
    let huge = MatView {
        offset: 0,
        row_stride: usize::MAX / 2,
        col_stride: 1,
        batch_stride: 0,
    };
    let err = gemm(
        &p,
        &a,
        huge,
        &b,
        MatView::row_major(3, 2),
        &mut c,
        MatView::row_major(2, 2),
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            GemmError::Overflow { .. } | GemmError::OutOfBounds { .. }
        ),
        "{err}"
    );
    // sgemm with a leading dimension too small for the data.
    assert!(sgemm(
        Trans::No,
        Trans::No,
        2,
        2,
        3,
        1.0,
        &a,
        3,
        &b,
        2,
        0.0,
        &mut c,
        1
    )
    .is_err());
    // The valid call works.
    gemm(
        &p,
        &a,
        MatView::row_major(2, 3),
        &b,
        MatView::row_major(3, 2),
        &mut c,
        MatView::row_major(2, 2),
    )
    .unwrap();
    assert_eq!(c, vec![3.0; 4]);
}
