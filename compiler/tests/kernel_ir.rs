//! The kernel IR on its own: validator errors, printer, structural hash, phase schedule, the
//! counter-based RNG, and the reference evaluator against hand-written plain-Rust formulas.

use kiln_compiler::kernel::{
    evaluate, library, parse_row_program, print::print_row_program, rng, schedule, structural_hash,
    structurally_equal, validate, BinaryOp, BufferRef, CmpOp, DType, IndexKind, InputAccess, Inst,
    LaunchError, Level, OutputAccess, RowBuilder, RowProgram, UnaryOp, ValidateError, ValueId,
    ValueType,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn randn(n: usize, seed: u64) -> Vec<f32> {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| r.random_range(-3.0..3.0)).collect()
}

#[test]
fn every_library_program_validates_and_prints_deterministically() {
    for prog in library::all() {
        validate(&prog).unwrap_or_else(|e| panic!("{}: {e}", prog.name));
        let a = print_row_program(&prog);
        let b = print_row_program(&prog.clone());
        assert_eq!(a, b);
        assert!(a.starts_with(&format!("row_kernel {} {{", prog.name)));
        assert_eq!(
            a.lines().count(),
            prog.inputs.len() + prog.body.len() + prog.outputs.len() + 2
        );
    }
}

#[test]
fn printer_text_is_stable() {
    let text = print_row_program(&library::rmsnorm_fwd(1e-6));
    let want = "\
row_kernel rmsnorm_fwd {
  in0 x: f32[rows, cols]
  in1 gamma: f32[cols]
  %0 = load in0                          ; f32 elem
  %1 = load in1                          ; f32 elem
  %2 = index.cols                        ; i32 kernel
  %3 = i32_to_f32 %2                     ; f32 kernel
  %4 = recip %3                          ; f32 kernel
  %5 = const.f32 1e-6                    ; f32 kernel
  %6 = mul %0, %0                        ; f32 elem
  %7 = row_sum %6                        ; f32 row
  %8 = mul %7, %4                        ; f32 row
  %9 = add %8, %5                        ; f32 row
  %10 = rsqrt %9                         ; f32 row
  %11 = mul %0, %10                      ; f32 elem
  %12 = mul %11, %1                      ; f32 elem
  out0 y: f32[rows, cols] = %12
  out1 rrms: f32[rows] = %10
}
";
    assert_eq!(text, want);
    // Invalid programs still print, without annotations, and odd names are quoted.
    let mut bad = library::residual_add();
    bad.name = "a b".into();
    bad.body
        .push(Inst::Binary(BinaryOp::Add, ValueId(7), ValueId(0)));
    let text = print_row_program(&bad);
    assert!(text.starts_with("row_kernel \"a b\" {"));
    assert!(text.contains("  %3 = add %7, %0\n"));
    assert!(!text.contains("; f32"));
}

#[test]
fn printed_programs_parse_back() {
    let mut progs = library::all();
    let mut b = RowBuilder::new("odd \"names\"; here\n");
    let x = b.load_input("x;y", DType::F32, InputAccess::Full);
    let l = b.load_input("lab\u{e9}ls", DType::I32, InputAccess::PerRow);
    let s = b.load_input("seed", DType::I32, InputAccess::Scalar);
    let c = b.f32(f32::from_bits(0x7fc0_1234));
    let d = b.f32(-1.5e-39);
    let i = b.i32(i32::MIN);
    let u = b.rand_uniform(s, l, 4_000_000_000);
    let m = b.cmp(CmpOp::Ne, l, i);
    let nm = b.unary(UnaryOp::Not, m);
    let y = b.select(nm, c, d);
    let z = b.fma(x, y, u);
    b.output("z", OutputAccess::ColSum, z);
    b.output("w", OutputAccess::Sum, d);
    progs.push(b.finish().unwrap());
    for p in progs {
        let text = print_row_program(&p);
        let q = parse_row_program(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert!(structurally_equal(&p, &q), "{text}");
        assert_eq!(print_row_program(&q), text);
        assert_eq!(p.name, q.name);
        for (a, b) in p.inputs.iter().zip(&q.inputs) {
            assert_eq!(a.name, b.name);
        }
    }
}

#[test]
fn parser_reports_errors_and_never_panics() {
    let text = print_row_program(&library::cross_entropy_fwd());
    let e = parse_row_program(&text.replace("%4 = ", "%5 = ")).unwrap_err();
    assert_eq!(e.line, 9, "{e}");
    assert!(parse_row_program(&text.replace("row_max", "row_min")).is_err());
    assert!(parse_row_program(&text.replace("}\n", "")).is_err());
    assert!(parse_row_program("").is_err());
    assert!(parse_row_program("row_kernel \"x {").is_err());
    // Every truncation and every single-character deletion: an error or a program, no panic.
    for i in 0..text.len() {
        if text.is_char_boundary(i) {
            let _ = parse_row_program(&text[..i]);
            let mut t = text.clone();
            t.remove(i);
            let _ = parse_row_program(&t);
        }
    }
}

#[test]
fn nan_constants_print_their_bits() {
    let mut b = RowBuilder::new("k");
    let c = b.f32(f32::from_bits(0x7fc0_0001));
    let d = b.f32(f32::NEG_INFINITY);
    let s = b.add(c, d);
    b.output("y", OutputAccess::Full, s);
    let text = print_row_program(&b.finish().unwrap());
    assert!(text.contains("const.f32 nan(0x7fc00001)"));
    assert!(text.contains("const.f32 -inf"));
}

fn expect_err(prog: &RowProgram) -> ValidateError {
    match validate(prog) {
        Ok(_) => panic!("{} should be invalid", prog.name),
        Err(e) => e,
    }
}

#[test]
fn validator_rejects_malformed_programs() {
    let base = library::residual_add();

    let mut p = base.clone();
    p.body[2] = Inst::Binary(BinaryOp::Add, ValueId(0), ValueId(2));
    assert!(matches!(
        expect_err(&p),
        ValidateError::ForwardReference { .. }
    ));

    let mut p = base.clone();
    p.body[0] = Inst::Load(kiln_compiler::kernel::row::InputId(5));
    assert!(matches!(
        expect_err(&p),
        ValidateError::UnknownInput { input: 5, .. }
    ));

    let mut b = RowBuilder::new("types");
    let x = b.load_input("x", DType::F32, InputAccess::Full);
    let l = b.load_input("l", DType::I32, InputAccess::PerRow);
    let bad = b.add(x, l);
    b.output("y", OutputAccess::Full, bad);
    let e = expect_err(b.program());
    assert!(matches!(e, ValidateError::Type { op: "add", .. }), "{e}");
    assert_eq!(
        e.to_string(),
        "%2: `add` expects two f32 or two i32, found F32, I32"
    );

    let mut b = RowBuilder::new("rem_f32");
    let x = b.load_input("x", DType::F32, InputAccess::Full);
    let r = b.binary(BinaryOp::Rem, x, x);
    b.output("y", OutputAccess::Full, r);
    assert!(matches!(
        expect_err(b.program()),
        ValidateError::Type { op: "rem", .. }
    ));

    let mut b = RowBuilder::new("exp_i32");
    let x = b.load_input("x", DType::I32, InputAccess::Full);
    let e = b.exp(x);
    let f = b.i32_to_f32(x);
    b.output("y", OutputAccess::Full, f);
    let _ = e;
    assert!(matches!(
        expect_err(b.program()),
        ValidateError::Type { op: "exp", .. }
    ));

    let mut b = RowBuilder::new("select");
    let x = b.load_input("x", DType::F32, InputAccess::Full);
    let s = b.select(x, x, x);
    b.output("y", OutputAccess::Full, s);
    assert!(matches!(
        expect_err(b.program()),
        ValidateError::Type { op: "select", .. }
    ));

    let mut b = RowBuilder::new("cmp_masks");
    let x = b.load_input("x", DType::F32, InputAccess::Full);
    let m = b.cmp(CmpOp::Lt, x, x);
    let mm = b.cmp(CmpOp::Eq, m, m);
    let one = b.f32(1.0);
    let s = b.select(mm, one, x);
    b.output("y", OutputAccess::Full, s);
    assert!(matches!(
        expect_err(b.program()),
        ValidateError::Type { .. }
    ));

    let mut b = RowBuilder::new("rand_key_elem");
    let x = b.load_input("seed", DType::I32, InputAccess::Full);
    let u = b.rand_uniform(x, x, 0);
    b.output("y", OutputAccess::Full, u);
    assert!(matches!(
        expect_err(b.program()),
        ValidateError::RandKeyLevel { .. }
    ));

    let mut b = RowBuilder::new("per_row_of_elem");
    let x = b.load_input("x", DType::F32, InputAccess::Full);
    b.output("y", OutputAccess::PerRow, x);
    assert!(matches!(
        expect_err(b.program()),
        ValidateError::OutputLevel { .. }
    ));

    let mut b = RowBuilder::new("sum_of_elem");
    let x = b.load_input("x", DType::F32, InputAccess::Full);
    b.output("y", OutputAccess::Sum, x);
    assert!(matches!(
        expect_err(b.program()),
        ValidateError::OutputLevel { .. }
    ));

    let mut b = RowBuilder::new("i32_output");
    let x = b.load_input("x", DType::I32, InputAccess::Full);
    b.output("y", OutputAccess::Full, x);
    assert!(matches!(
        expect_err(b.program()),
        ValidateError::OutputType { .. }
    ));

    let mut p = base.clone();
    p.outputs[0].value = ValueId(99);
    assert!(matches!(
        expect_err(&p),
        ValidateError::OutputUndefined { .. }
    ));

    // The builder validates too.
    let mut b = RowBuilder::new("finish");
    let x = b.load_input("x", DType::F32, InputAccess::Full);
    b.output("y", OutputAccess::PerRow, x);
    assert!(b.finish().is_err());
}

#[test]
fn validator_infers_types_and_levels() {
    let prog = library::cross_entropy_fwd();
    let t = validate(&prog).unwrap();
    // logits elem, labels row, loss_scale kernel; row_max is row-level.
    assert_eq!(t.level[0], Level::Elem);
    assert_eq!(t.level[1], Level::Row);
    assert_eq!(t.level[2], Level::Kernel);
    assert_eq!(t.ty[1], ValueType::I32);
    let is_target = prog
        .body
        .iter()
        .position(|i| matches!(i, Inst::Cmp(CmpOp::Eq, ..)))
        .unwrap();
    assert_eq!(t.ty[is_target], ValueType::Mask);
    assert_eq!(t.level[is_target], Level::Elem);
    let m = prog
        .body
        .iter()
        .position(|i| matches!(i, Inst::Reduce(..)))
        .unwrap();
    assert_eq!((t.ty[m], t.level[m]), (ValueType::F32, Level::Row));
}

#[test]
fn structural_hash_ignores_names_only() {
    let a = library::layernorm_fwd(1e-5);
    let mut b = a.clone();
    b.name = "renamed".into();
    b.inputs[1].name = "weight".into();
    b.outputs[0].name = "out".into();
    assert_eq!(structural_hash(&a), structural_hash(&b));
    assert!(structurally_equal(&a, &b));
    let c = library::layernorm_fwd(1e-6);
    assert_ne!(structural_hash(&a), structural_hash(&c));
    assert!(!structurally_equal(&a, &c));
    let mut d = a.clone();
    d.inputs[1].access = InputAccess::PerRow;
    assert_ne!(structural_hash(&a), structural_hash(&d));
    let mut e = a.clone();
    e.outputs[1].access = OutputAccess::Sum;
    assert_ne!(structural_hash(&a), structural_hash(&e));
    // All library programs are pairwise distinct.
    let all = library::all();
    for (i, p) in all.iter().enumerate() {
        for q in &all[i + 1..] {
            assert_ne!(
                structural_hash(p),
                structural_hash(q),
                "{} vs {}",
                p.name,
                q.name
            );
        }
    }
    // Pinned: the hash is a stable cache key (a change here must bump ENCODING_VERSION).
    assert_eq!(
        structural_hash(&library::residual_add()),
        0x1d67_b41b_cd3c_13c3
    );
}

#[test]
fn schedule_phases_of_the_standard_kernels() {
    let passes = |p: &RowProgram| schedule(p).unwrap().passes().count();
    assert_eq!(passes(&library::residual_add()), 1);
    assert_eq!(passes(&library::adamw()), 1);
    // mean, variance, normalize.
    assert_eq!(passes(&library::layernorm_fwd(1e-5)), 3);
    // sums of g and g*xhat (and the column sums), then dx.
    assert_eq!(passes(&library::layernorm_bwd()), 2);
    assert_eq!(passes(&library::rmsnorm_fwd(1e-6)), 2);
    // max, sum of exp, divide.
    assert_eq!(passes(&library::softmax_causal()), 3);
    // max, then sum of exp and the target logit together.
    assert_eq!(passes(&library::cross_entropy_fwd()), 2);
    assert_eq!(passes(&library::cross_entropy_bwd()), 1);

    let s = schedule(&library::layernorm_fwd(1e-5)).unwrap();
    // inv_n and eps are computed once per launch.
    assert!(s.kernel_values.len() >= 4);
    assert_eq!(s.row_outputs, vec![1, 2]);
    let last = s.passes().last().unwrap();
    assert_eq!(last.outputs, vec![0]);
    assert!(last.reductions.is_empty());

    // Dead code is dropped.
    let mut b = RowBuilder::new("dead");
    let x = b.load_input("x", DType::F32, InputAccess::Full);
    let _unused = b.exp(x);
    let s2 = b.row_sum(x);
    let _dead_sum = b.row_max(x);
    b.output("s", OutputAccess::PerRow, s2);
    let prog = b.finish().unwrap();
    let s = schedule(&prog).unwrap();
    assert_eq!(s.passes().count(), 1);
    let pass = s.passes().next().unwrap();
    assert_eq!(pass.elem_values, vec![ValueId(0)]);
    assert_eq!(pass.reductions, vec![ValueId(2)]);

    assert!(schedule(&library::adamw())
        .unwrap()
        .is_flat_map(&library::adamw()));
    assert!(schedule(&library::dropout_fwd(0))
        .unwrap()
        .is_flat_map(&library::dropout_fwd(0)));
    let ln = library::layernorm_fwd(1e-5);
    assert!(!schedule(&ln).unwrap().is_flat_map(&ln));
    let bg = library::bias_gelu_erf();
    assert!(!schedule(&bg).unwrap().is_flat_map(&bg));
}

#[test]
fn rng_is_pinned_and_uniform() {
    // Pinned values: every backend must reproduce these bits.
    assert_eq!(rng::mix32(0), 0);
    assert_eq!(rng::mix32(1), 0x6889_90c0);
    assert_eq!(rng::rand_bits(rng::rand_key(1, 2, 3), 4), 0x4198_70ac);
    let u: Vec<f32> = (0..3).map(|i| rng::rand_uniform(1234, 7, 0, i)).collect();
    assert_eq!(u, vec![0.624_009_8, 0.731_572_5, 0.101_209_28]);
    let k = rng::rand_key(1234, 7, 0);
    let first: Vec<u32> = (0..4).map(|i| rng::rand_bits(k, i)).collect();
    let again: Vec<u32> = (0..4)
        .map(|i| rng::rand_bits(rng::rand_key(1234, 7, 0), i))
        .collect();
    assert_eq!(first, again);
    assert_ne!(rng::rand_key(1234, 7, 0), rng::rand_key(1234, 7, 1));
    assert_ne!(rng::rand_key(1234, 7, 0), rng::rand_key(1234, 8, 0));
    assert_ne!(rng::rand_key(1234, 7, 0), rng::rand_key(1235, 7, 0));
    assert_eq!(rng::flat_index(3, 5, 10), 35);
    assert_eq!(rng::flat_index(1 << 20, 0, 1 << 12), 0);

    // Uniform on [0, 1): chi-square over 64 bins, and the extremes are reachable/in range.
    let n = 1 << 20;
    let mut bins = [0u32; 64];
    let mut sum = 0.0f64;
    for i in 0..n {
        let u = rng::rand_uniform(42, 3, 1, i);
        assert!((0.0..1.0).contains(&u));
        bins[(u * 64.0) as usize] += 1;
        sum += u as f64;
    }
    let expected = n as f64 / 64.0;
    let chi2: f64 = bins
        .iter()
        .map(|&b| (b as f64 - expected).powi(2) / expected)
        .sum();
    // 63 degrees of freedom: the 99.99th percentile is about 115.
    assert!(chi2 < 115.0, "chi2 {chi2}");
    assert!((sum / n as f64 - 0.5).abs() < 1e-3);
    // Adjacent indices are not correlated (serial correlation near 0).
    let xs: Vec<f64> = (0..n)
        .map(|i| rng::rand_uniform(1, 1, 0, i) as f64 - 0.5)
        .collect();
    let corr: f64 = xs.windows(2).map(|w| w[0] * w[1]).sum::<f64>() / (n as f64 / 12.0);
    assert!(corr.abs() < 0.01, "serial correlation {corr}");
}

/// The evaluator against formulas written out by hand (f64).
#[test]
fn evaluator_matches_hand_written_layernorm_softmax_and_cross_entropy() {
    let (rows, cols) = (5, 13);
    let x = randn(rows * cols, 1);
    let g = randn(cols, 2);
    let bias = randn(cols, 3);
    let prog = library::layernorm_fwd(1e-5);
    let out = evaluate::<f64>(
        &prog,
        &[
            BufferRef::F32(&x),
            BufferRef::F32(&g),
            BufferRef::F32(&bias),
        ],
        rows,
        cols,
    )
    .unwrap();
    for r in 0..rows {
        let row: Vec<f64> = x[r * cols..(r + 1) * cols]
            .iter()
            .map(|&v| v as f64)
            .collect();
        let mean = row.iter().sum::<f64>() / cols as f64;
        let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / cols as f64;
        let rstd = 1.0 / (var + 1e-5f32 as f64).sqrt();
        assert!((out[1][r] - mean).abs() < 1e-12);
        assert!((out[2][r] - rstd).abs() < 1e-9);
        for c in 0..cols {
            let want = (row[c] - mean) * rstd * g[c] as f64 + bias[c] as f64;
            assert!((out[0][r * cols + c] - want).abs() < 1e-9);
        }
    }

    // Softmax with a causal mask: row r is query r % q_len of keys 0..cols.
    let q_len = 4i32;
    let prog = library::softmax_causal();
    let out = evaluate::<f64>(
        &prog,
        &[
            BufferRef::F32(&x),
            BufferRef::F32(&[0.5]),
            BufferRef::I32(&[q_len]),
        ],
        rows,
        cols,
    )
    .unwrap();
    for r in 0..rows {
        let q = r as i32 % q_len;
        let last = (q + cols as i32 - q_len) as usize;
        let z: Vec<f64> = (0..cols).map(|c| x[r * cols + c] as f64 * 0.5).collect();
        let m = z[..=last].iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let s: f64 = z[..=last].iter().map(|v| (v - m).exp()).sum();
        for c in 0..cols {
            let want = if c <= last { (z[c] - m).exp() / s } else { 0.0 };
            assert!((out[0][r * cols + c] - want).abs() < 1e-12, "r{r} c{c}");
        }
    }

    // Cross-entropy: loss = logsumexp - x[label], 0 for ignored rows; Sum output is scaled.
    let labels = [3, -1, 0, 12, 7];
    let prog = library::cross_entropy_fwd();
    let out = evaluate::<f64>(
        &prog,
        &[
            BufferRef::F32(&x),
            BufferRef::I32(&labels),
            BufferRef::F32(&[0.25]),
        ],
        rows,
        cols,
    )
    .unwrap();
    let mut total = 0.0;
    for r in 0..rows {
        let row: Vec<f64> = x[r * cols..(r + 1) * cols]
            .iter()
            .map(|&v| v as f64)
            .collect();
        let lse = row.iter().map(|v| v.exp()).sum::<f64>().ln();
        let want = if labels[r] < 0 {
            0.0
        } else {
            lse - row[labels[r] as usize]
        };
        assert!((out[0][r] - want).abs() < 1e-9, "row {r}");
        assert!((out[1][r] - lse).abs() < 1e-9);
        total += want * 0.25;
    }
    assert!((out[2][0] - total).abs() < 1e-9);

    // And its backward sums to zero over each valid row (softmax minus one-hot).
    let prog = library::cross_entropy_bwd();
    let lse: Vec<f32> = out[1].iter().map(|&v| v as f32).collect();
    let d = evaluate::<f64>(
        &prog,
        &[
            BufferRef::F32(&x),
            BufferRef::F32(&lse),
            BufferRef::I32(&labels),
            BufferRef::F32(&[1.0]),
        ],
        rows,
        cols,
    )
    .unwrap();
    for r in 0..rows {
        let s: f64 = d[0][r * cols..(r + 1) * cols].iter().sum();
        assert!(s.abs() < 1e-6, "row {r}: {s}");
    }
    assert!(d[0][cols..2 * cols].iter().all(|&v| v == 0.0));
}

#[test]
fn evaluator_f32_and_f64_agree_and_column_sums_work() {
    let (rows, cols) = (7, 9);
    let x = randn(rows * cols, 4);
    let dy = randn(rows * cols, 5);
    let g = randn(cols, 6);
    let mean = randn(rows, 7);
    let rstd: Vec<f32> = randn(rows, 8).iter().map(|v| v.abs() + 0.5).collect();
    let inputs = [
        BufferRef::F32(&x),
        BufferRef::F32(&dy),
        BufferRef::F32(&g),
        BufferRef::F32(&mean),
        BufferRef::F32(&rstd),
    ];
    let prog = library::layernorm_bwd();
    let a = evaluate::<f32>(&prog, &inputs, rows, cols).unwrap();
    let b = evaluate::<f64>(&prog, &inputs, rows, cols).unwrap();
    for (oa, ob) in a.iter().zip(&b) {
        for (&p, &q) in oa.iter().zip(ob) {
            assert!((p as f64 - q).abs() <= 1e-4 * (1.0 + q.abs()));
        }
    }
    // dbeta = column sums of dy.
    for c in 0..cols {
        let want: f64 = (0..rows).map(|r| dy[r * cols + c] as f64).sum();
        assert!((b[2][c] - want).abs() < 1e-9);
    }
}

#[test]
fn evaluator_integer_semantics_never_trap() {
    let mut b = RowBuilder::new("ints");
    let a = b.load_input("a", DType::I32, InputAccess::Full);
    let d = b.load_input("d", DType::I32, InputAccess::Full);
    let q = b.binary(BinaryOp::Div, a, d);
    let r = b.binary(BinaryOp::Rem, a, d);
    let n = b.unary(UnaryOp::Abs, a);
    let fq = b.i32_to_f32(q);
    let fr = b.i32_to_f32(r);
    let fn_ = b.i32_to_f32(n);
    b.output("q", OutputAccess::Full, fq);
    b.output("r", OutputAccess::Full, fr);
    b.output("abs", OutputAccess::Full, fn_);
    let prog = b.finish().unwrap();
    let av = [7, -7, i32::MIN, 5, i32::MIN];
    let dv = [0, 2, -1, -1, 1];
    let out = evaluate::<f64>(&prog, &[BufferRef::I32(&av), BufferRef::I32(&dv)], 1, 5).unwrap();
    assert_eq!(
        out[0],
        vec![0.0, -3.0, i32::MIN as f64, -5.0, i32::MIN as f64]
    );
    assert_eq!(out[1], vec![0.0, -1.0, 0.0, 0.0, 0.0]);
    assert_eq!(out[2][2], i32::MIN as f64);
}

#[test]
fn evaluator_rejects_bad_launches() {
    let prog = library::layernorm_fwd(1e-5);
    let x = vec![0.0f32; 12];
    let g = vec![1.0f32; 4];
    let ok = [BufferRef::F32(&x), BufferRef::F32(&g), BufferRef::F32(&g)];
    assert!(evaluate::<f32>(&prog, &ok, 3, 4).is_ok());
    let e = evaluate::<f32>(&prog, &ok, 4, 4).unwrap_err();
    assert!(
        matches!(
            e,
            LaunchError::InputLen {
                index: 0,
                expected: 16,
                found: 12,
                ..
            }
        ),
        "{e}"
    );
    let e = evaluate::<f32>(&prog, &ok[..2], 3, 4).unwrap_err();
    assert!(matches!(
        e,
        LaunchError::InputCount {
            expected: 3,
            found: 2
        }
    ));
    let labels = [0i32; 4];
    let e = evaluate::<f32>(
        &prog,
        &[
            BufferRef::F32(&x),
            BufferRef::I32(&labels),
            BufferRef::F32(&g),
        ],
        3,
        4,
    )
    .unwrap_err();
    assert!(matches!(e, LaunchError::InputDType { index: 1, .. }));
    let e = evaluate::<f32>(&prog, &ok, usize::MAX, 2).unwrap_err();
    assert!(matches!(e, LaunchError::TooLarge { .. }));
    // Empty launches are fine: column sums of zero rows are zero.
    let out = evaluate::<f64>(
        &library::layernorm_bwd(),
        &[
            BufferRef::F32(&[]),
            BufferRef::F32(&[]),
            BufferRef::F32(&g),
            BufferRef::F32(&[]),
            BufferRef::F32(&[]),
        ],
        0,
        4,
    )
    .unwrap();
    assert_eq!(out[1], vec![0.0; 4]);
}

#[test]
fn index_instructions_evaluate_positions() {
    let mut b = RowBuilder::new("pos");
    let r = b.index(IndexKind::Row);
    let c = b.index(IndexKind::Col);
    let rows = b.index(IndexKind::Rows);
    let cols = b.index(IndexKind::Cols);
    let k = b.mul(r, cols);
    let flat = b.add(k, c);
    let t = b.mul(rows, cols);
    let f = b.i32_to_f32(flat);
    let ft = b.i32_to_f32(t);
    let y = b.div(f, ft);
    b.output("y", OutputAccess::Full, y);
    let prog = b.finish().unwrap();
    let out = evaluate::<f64>(&prog, &[], 3, 4).unwrap();
    let want: Vec<f64> = (0..12).map(|i| i as f64 / 12.0).collect();
    assert_eq!(out[0], want);
}
