//! The Cranelift JIT against the kernel IR's reference evaluator (f64), on random inputs, for the
//! library's fused kernels and for hand-built programs that exercise every instruction, at column
//! counts that hit the unrolled loop, the one-vector loop and the tail.

use kiln_compiler::kernel::{
    evaluate, library, BinaryOp, BufferRef, CmpOp, DType, IndexKind, InputAccess, OutputAccess,
    RowBuilder, RowProgram, UnaryOp,
};
use kiln_runtime::cpu::jit::{
    JitError, JitKernel, JitOptions, KernelCache, KernelInput, Parallelism,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Random inputs for a program: f32 in [-range, range], i32 labels in [-1, cols) (so some rows
/// are ignored), and scalar hyperparameters chosen by name.
struct Inputs {
    f: Vec<Vec<f32>>,
    i: Vec<Vec<i32>>,
}

fn make_inputs(prog: &RowProgram, rows: usize, cols: usize, seed: u64, range: f32) -> Inputs {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut f = vec![];
    let mut i = vec![];
    for decl in &prog.inputs {
        let n = decl.access.len(rows, cols).unwrap();
        match decl.dtype {
            DType::F32 => {
                let v: Vec<f32> = match (decl.name.as_str(), decl.access) {
                    ("scale", _) => vec![0.125],
                    ("p", _) => vec![0.25],
                    ("lr", _) => vec![1e-3],
                    ("beta1", _) => vec![0.9],
                    ("beta2", _) => vec![0.95],
                    ("eps", _) => vec![1e-8],
                    ("weight_decay", _) => vec![0.1],
                    ("bias_correction1", _) => vec![1.0 / (1.0 - 0.9f32.powi(3))],
                    ("bias_correction2", _) => vec![1.0 / (1.0 - 0.95f32.powi(3))],
                    ("grad_scale", _) => vec![0.5],
                    ("loss_scale", _) | ("dloss", _) => vec![1.0 / rows.max(1) as f32],
                    ("v", _) => (0..n).map(|_| rng.random_range(0.0..1.0)).collect(),
                    ("rstd", _) | ("rrms", _) => {
                        (0..n).map(|_| rng.random_range(0.5..2.0)).collect()
                    }
                    ("probs", _) => (0..n).map(|_| rng.random_range(0.0..1.0)).collect(),
                    _ => (0..n).map(|_| rng.random_range(-range..range)).collect(),
                };
                f.push(v);
                i.push(vec![]);
            }
            DType::I32 => {
                let v: Vec<i32> = match decl.name.as_str() {
                    "labels" => (0..n)
                        .map(|_| rng.random_range(-1..cols.max(1) as i32))
                        .collect(),
                    "q_len" => vec![(cols as i32 / 2).max(1)],
                    "seed" => vec![1234],
                    "step" => vec![7],
                    _ => (0..n).map(|_| rng.random_range(-50..50)).collect(),
                };
                f.push(vec![]);
                i.push(v);
            }
        }
    }
    Inputs { f, i }
}

fn refs<'a>(prog: &RowProgram, inp: &'a Inputs) -> (Vec<BufferRef<'a>>, Vec<KernelInput<'a>>) {
    let mut r = vec![];
    let mut k = vec![];
    for (j, decl) in prog.inputs.iter().enumerate() {
        match decl.dtype {
            DType::F32 => {
                r.push(BufferRef::F32(&inp.f[j]));
                k.push(KernelInput::F32(&inp.f[j]));
            }
            DType::I32 => {
                r.push(BufferRef::I32(&inp.i[j]));
                k.push(KernelInput::I32(&inp.i[j]));
            }
        }
    }
    (r, k)
}

fn run_jit(
    kernel: &JitKernel,
    prog: &RowProgram,
    inputs: &[KernelInput<'_>],
    rows: usize,
    cols: usize,
    par: Parallelism,
) -> Vec<Vec<f32>> {
    let mut outs: Vec<Vec<f32>> = prog
        .outputs
        .iter()
        // Poisoned with NaN so that an output the kernel forgets to write is caught.
        .map(|o| vec![f32::NAN; o.access.len(rows, cols).unwrap()])
        .collect();
    {
        let mut views: Vec<&mut [f32]> = outs.iter_mut().map(|o| o.as_mut_slice()).collect();
        kernel
            .run_with(inputs, &mut views, rows, cols, par)
            .unwrap_or_else(|e| panic!("{}: launch failed: {e}", prog.name));
    }
    outs
}

/// `|got - want| <= atol + rtol * |want|` elementwise, with a message naming the first failure.
fn assert_close(what: &str, got: &[f32], want: &[f64], rtol: f64, atol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst = (0.0f64, 0usize);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let g = g as f64;
        if w.is_nan() {
            assert!(g.is_nan(), "{what}[{i}]: got {g}, want NaN");
            continue;
        }
        if w.is_infinite() {
            assert_eq!(g, w, "{what}[{i}]");
            continue;
        }
        let err = (g - w).abs() / (atol + rtol * w.abs());
        if !(err <= 1.0) {
            panic!(
                "{what}[{i}]: got {g:e}, want {w:e} (err {:e})",
                (g - w).abs()
            );
        }
        if err > worst.0 {
            worst = (err, i);
        }
    }
}

/// Runs `prog` through the JIT and the f64 evaluator and compares every output.
fn check(prog: &RowProgram, rows: usize, cols: usize, seed: u64, rtol: f64, atol: f64) {
    let inp = make_inputs(prog, rows, cols, seed, 3.0);
    let (r, k) = refs(prog, &inp);
    let want = evaluate::<f64>(prog, &r, rows, cols).unwrap();
    let kernel = JitKernel::compile(prog).unwrap_or_else(|e| panic!("{}: {e}", prog.name));
    let got = run_jit(&kernel, prog, &k, rows, cols, Parallelism::Auto);
    for (o, decl) in prog.outputs.iter().enumerate() {
        // Column and total sums add `rows` terms: scale the absolute tolerance with them.
        let scale = match decl.access {
            OutputAccess::ColSum | OutputAccess::Sum => (rows as f64).max(1.0),
            _ => 1.0,
        };
        assert_close(
            &format!("{} {rows}x{cols} out {}", prog.name, decl.name),
            &got[o],
            &want[o],
            rtol,
            atol * scale,
        );
    }
}

const SHAPES: &[(usize, usize)] = &[
    (1, 1),
    (3, 3),
    (2, 4),
    (5, 7),
    (4, 16),
    (3, 17),
    (7, 33),
    (2, 63),
    (16, 100),
    (9, 257),
    (3, 0),
    (0, 5),
];

fn check_shapes(prog: &RowProgram, rtol: f64, atol: f64) {
    for (s, &(rows, cols)) in SHAPES.iter().enumerate() {
        check(prog, rows, cols, 17 + s as u64, rtol, atol);
    }
}

#[test]
fn bias_gelu_tanh() {
    check_shapes(&library::bias_gelu_tanh(), 1e-5, 1e-6);
}

#[test]
fn bias_gelu_erf() {
    check_shapes(&library::bias_gelu_erf(), 1e-5, 1e-6);
}

#[test]
fn gelu_erf_bwd() {
    check_shapes(&library::gelu_erf_bwd(), 1e-5, 1e-6);
}

#[test]
fn swiglu_fwd_and_bwd() {
    check_shapes(&library::swiglu_fwd(), 1e-5, 1e-6);
    check_shapes(&library::swiglu_bwd(), 1e-5, 1e-6);
}

#[test]
fn residual_add() {
    check_shapes(&library::residual_add(), 1e-6, 0.0);
}

#[test]
fn layernorm_fwd_and_bwd() {
    check_shapes(&library::layernorm_fwd(1e-5), 1e-5, 1e-5);
    check_shapes(&library::layernorm_bwd(), 1e-5, 1e-5);
    check(&library::layernorm_fwd(1e-5), 64, 768, 5, 1e-5, 1e-5);
    check(&library::layernorm_bwd(), 300, 384, 6, 1e-5, 1e-5);
}

#[test]
fn rmsnorm_fwd_and_bwd() {
    check_shapes(&library::rmsnorm_fwd(1e-6), 1e-5, 1e-5);
    check_shapes(&library::rmsnorm_bwd(), 1e-5, 1e-5);
    check(&library::rmsnorm_bwd(), 300, 385, 7, 1e-5, 1e-5);
}

#[test]
fn softmax_with_scale_and_causal_mask() {
    check_shapes(&library::softmax_causal(), 1e-5, 1e-7);
    check(&library::softmax_causal(), 96, 64, 8, 1e-5, 1e-7);
    check_shapes(&library::softmax_bwd(), 1e-5, 1e-6);
}

#[test]
fn cross_entropy_fwd_and_bwd() {
    check_shapes(&library::cross_entropy_fwd(), 1e-5, 1e-5);
    check_shapes(&library::cross_entropy_bwd(), 1e-5, 1e-7);
    check(&library::cross_entropy_fwd(), 8, 1003, 9, 1e-5, 1e-5);
    check(&library::cross_entropy_bwd(), 8, 1003, 9, 1e-5, 1e-7);
}

#[test]
fn adamw_step() {
    check_shapes(&library::adamw(), 1e-5, 1e-7);
    check(&library::adamw(), 1, 100_003, 10, 1e-5, 1e-7);
}

/// Dropout's keep mask must be bit-identical to the reference (same zeros), and kept values
/// scaled identically.
#[test]
fn dropout_mask_is_bit_exact() {
    for stream in [0, 3] {
        let prog = library::dropout_fwd(stream);
        for &(rows, cols) in &[(5, 7), (33, 129), (1, 70_001)] {
            let inp = make_inputs(&prog, rows, cols, 11, 3.0);
            let (r, k) = refs(&prog, &inp);
            let want = evaluate::<f32>(&prog, &r, rows, cols).unwrap();
            let kernel = JitKernel::compile(&prog).unwrap();
            let got = run_jit(&kernel, &prog, &k, rows, cols, Parallelism::Auto);
            let zeros = got[0].iter().filter(|&&x| x == 0.0).count();
            let frac = zeros as f64 / (rows * cols) as f64;
            if rows * cols > 10_000 {
                assert!((frac - 0.25).abs() < 0.01, "drop fraction {frac}");
            }
            for (i, (&g, &w)) in got[0].iter().zip(&want[0]).enumerate() {
                assert_eq!(
                    g.to_bits(),
                    w.to_bits(),
                    "dropout {rows}x{cols} element {i}"
                );
            }
        }
    }
}

/// A program touching integer arithmetic (including division by zero and -1), masks, selects,
/// indices, min/max, abs/neg, and every output access.
fn kitchen_sink() -> RowProgram {
    let mut b = RowBuilder::new("kitchen_sink");
    let x = b.load_input("x", DType::F32, InputAccess::Full);
    let ia = b.load_input("ia", DType::I32, InputAccess::Full);
    let ib = b.load_input("ib", DType::I32, InputAccess::PerCol);
    let pr = b.load_input("pr", DType::F32, InputAccess::PerRow);
    let row = b.index(IndexKind::Row);
    let col = b.index(IndexKind::Col);
    let rows = b.index(IndexKind::Rows);
    let q = b.binary(BinaryOp::Div, ia, ib);
    let r = b.binary(BinaryOp::Rem, ia, ib);
    let s = b.add(q, r);
    let t = b.mul(s, col);
    let u = b.binary(BinaryOp::Max, t, row);
    let w = b.binary(BinaryOp::Min, u, rows);
    let nw = b.unary(UnaryOp::Neg, w);
    let aw = b.unary(UnaryOp::Abs, nw);
    let fw = b.i32_to_f32(aw);
    let zero = b.f32(0.0);
    let pos = b.cmp(CmpOp::Gt, x, zero);
    let big = b.cmp(CmpOp::Ge, ia, ib);
    let both = b.binary(BinaryOp::And, pos, big);
    let either = b.binary(BinaryOp::Or, pos, big);
    let neither = b.unary(UnaryOp::Not, either);
    let ax = b.unary(UnaryOp::Abs, x);
    let v1 = b.select(both, fw, ax);
    let v2 = b.select(neither, pr, v1);
    let m1 = b.max(v2, x);
    let m2 = b.min(m1, pr);
    let rs = b.row_sum(m2);
    let rm = b.row_max(x);
    let c = b.sub(m2, rm);
    let y = b.fma(c, pr, rs);
    let ne = b.cmp(CmpOp::Ne, ia, ib);
    let lt = b.cmp(CmpOp::Lt, x, pr);
    let le = b.cmp(CmpOp::Le, ia, ib);
    let eq = b.cmp(CmpOp::Eq, ia, ib);
    let one = b.f32(1.0);
    let y1 = b.select(ne, y, one);
    let y2 = b.select(lt, y1, c);
    let y3 = b.select(le, y2, fw);
    let y4 = b.select(eq, zero, y3);
    let ii = b.select(eq, ia, ib);
    let fi = b.i32_to_f32(ii);
    let out = b.add(y4, fi);
    b.output("full", OutputAccess::Full, out);
    b.output("per_row", OutputAccess::PerRow, rs);
    b.output("col_sum", OutputAccess::ColSum, out);
    b.output("sum", OutputAccess::Sum, rm);
    b.output("broadcast", OutputAccess::Full, rs);
    b.finish().unwrap()
}

#[test]
fn every_instruction_and_output_access() {
    let prog = kitchen_sink();
    for (s, &(rows, cols)) in SHAPES.iter().enumerate() {
        let mut inp = make_inputs(&prog, rows, cols, 100 + s as u64, 3.0);
        // Divisors include 0 and -1, dividends include i32::MIN.
        for (j, v) in inp.i[2].iter_mut().enumerate() {
            *v = [0, -1, 3, -7, 1, 5][j % 6];
        }
        if let Some(v) = inp.i[1].first_mut() {
            *v = i32::MIN;
        }
        let (r, k) = refs(&prog, &inp);
        let want = evaluate::<f64>(&prog, &r, rows, cols).unwrap();
        let kernel = JitKernel::compile(&prog).unwrap();
        let got = run_jit(&kernel, &prog, &k, rows, cols, Parallelism::Auto);
        for (o, decl) in prog.outputs.iter().enumerate() {
            let scale = match decl.access {
                OutputAccess::ColSum | OutputAccess::Sum => rows.max(1) as f64,
                _ => 1.0,
            };
            assert_close(
                &format!("kitchen_sink {rows}x{cols} {}", decl.name),
                &got[o],
                &want[o],
                1e-5,
                1e-4 * scale * (cols.max(1) as f64),
            );
        }
    }
}

#[test]
fn unroll_factors_agree() {
    let prog = library::layernorm_bwd();
    let (rows, cols) = (37, 203);
    let inp = make_inputs(&prog, rows, cols, 3, 2.0);
    let (r, k) = refs(&prog, &inp);
    let want = evaluate::<f64>(&prog, &r, rows, cols).unwrap();
    for unroll in [1, 2, 3, 4, 8] {
        let kernel = JitKernel::compile_with(&prog, JitOptions { unroll }).unwrap();
        let got = run_jit(&kernel, &prog, &k, rows, cols, Parallelism::Auto);
        for (o, decl) in prog.outputs.iter().enumerate() {
            assert_close(
                &format!("unroll {unroll} {}", decl.name),
                &got[o],
                &want[o],
                1e-5,
                1e-5 * rows as f64,
            );
        }
    }
}

/// Thread splitting must not change a single bit, including column sums.
#[test]
fn results_do_not_depend_on_threads() {
    for prog in [
        library::layernorm_bwd(),
        library::cross_entropy_fwd(),
        library::dropout_fwd(1),
    ] {
        let (rows, cols) = (700, 129);
        let inp = make_inputs(&prog, rows, cols, 4, 2.0);
        let (_, k) = refs(&prog, &inp);
        let kernel = JitKernel::compile(&prog).unwrap();
        let a = run_jit(&kernel, &prog, &k, rows, cols, Parallelism::Serial);
        let b = run_jit(&kernel, &prog, &k, rows, cols, Parallelism::Auto);
        for (x, y) in a.iter().zip(&b) {
            let xb: Vec<u32> = x.iter().map(|v| v.to_bits()).collect();
            let yb: Vec<u32> = y.iter().map(|v| v.to_bits()).collect();
            assert_eq!(xb, yb, "{}", prog.name);
        }
    }
}

#[test]
fn scalars_by_value_match_scalar_buffers() {
    let prog = library::dropout_fwd(2);
    let (rows, cols) = (3, 50);
    let x: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
    let kernel = JitKernel::compile(&prog).unwrap();
    let mut a = vec![0.0; rows * cols];
    let mut b = vec![0.0; rows * cols];
    let p = [0.5f32];
    let seed = [99i32];
    let step = [4i32];
    kernel
        .run(
            &[
                KernelInput::F32(&x),
                KernelInput::F32(&p),
                KernelInput::I32(&seed),
                KernelInput::I32(&step),
            ],
            &mut [&mut a],
            rows,
            cols,
        )
        .unwrap();
    kernel
        .run(
            &[
                KernelInput::F32(&x),
                KernelInput::ScalarF32(0.5),
                KernelInput::ScalarI32(99),
                KernelInput::ScalarI32(4),
            ],
            &mut [&mut b],
            rows,
            cols,
        )
        .unwrap();
    assert_eq!(a, b);
    assert!(a.iter().any(|&v| v == 0.0) && a.iter().any(|&v| v != 0.0));
}

#[test]
fn launch_errors_are_errors() {
    let prog = library::layernorm_fwd(1e-5);
    let kernel = JitKernel::compile(&prog).unwrap();
    let x = vec![0.0f32; 12];
    let g = vec![1.0f32; 4];
    let short = vec![1.0f32; 3];
    let mut y = vec![0.0f32; 12];
    let mut m = vec![0.0f32; 3];
    let mut s = vec![0.0f32; 3];
    let ok = kernel.run(
        &[
            KernelInput::F32(&x),
            KernelInput::F32(&g),
            KernelInput::F32(&g),
        ],
        &mut [&mut y, &mut m, &mut s],
        3,
        4,
    );
    assert!(ok.is_ok());
    let err = kernel.run(
        &[
            KernelInput::F32(&x),
            KernelInput::F32(&short),
            KernelInput::F32(&g),
        ],
        &mut [&mut y, &mut m, &mut s],
        3,
        4,
    );
    assert!(matches!(err, Err(JitError::Launch(_))), "{err:?}");
    let err = kernel.run(
        &[KernelInput::F32(&x), KernelInput::F32(&g)],
        &mut [&mut y, &mut m, &mut s],
        3,
        4,
    );
    assert!(matches!(err, Err(JitError::Launch(_))), "{err:?}");
    let labels = vec![0i32; 4];
    let err = kernel.run(
        &[
            KernelInput::F32(&x),
            KernelInput::I32(&labels),
            KernelInput::F32(&g),
        ],
        &mut [&mut y, &mut m, &mut s],
        3,
        4,
    );
    assert!(matches!(err, Err(JitError::Launch(_))), "{err:?}");
    let err = kernel.run(
        &[
            KernelInput::F32(&x),
            KernelInput::ScalarF32(1.0),
            KernelInput::F32(&g),
        ],
        &mut [&mut y, &mut m, &mut s],
        3,
        4,
    );
    assert!(
        matches!(err, Err(JitError::ScalarForBuffer { .. })),
        "{err:?}"
    );
    let err = kernel.run(
        &[
            KernelInput::F32(&x),
            KernelInput::F32(&g),
            KernelInput::F32(&g),
        ],
        &mut [&mut y, &mut m],
        3,
        4,
    );
    assert!(matches!(err, Err(JitError::Launch(_))), "{err:?}");
    let err = kernel.run(
        &[
            KernelInput::F32(&x),
            KernelInput::F32(&g),
            KernelInput::F32(&g),
        ],
        &mut [&mut y, &mut m, &mut s],
        usize::MAX,
        4,
    );
    assert!(matches!(err, Err(JitError::Launch(_))), "{err:?}");
    // An invalid program is rejected at compile time.
    let mut bad = prog.clone();
    bad.outputs[1].value = kiln_compiler::kernel::ValueId(0);
    assert!(matches!(
        JitKernel::compile(&bad),
        Err(JitError::Invalid(_))
    ));
}

#[test]
fn cache_shares_structurally_equal_kernels() {
    let cache = KernelCache::new();
    let a = library::layernorm_fwd(1e-5);
    let mut renamed = a.clone();
    renamed.name = "other".into();
    renamed.inputs[0].name = "h".into();
    let k1 = cache.get_or_compile(&a).unwrap();
    let k2 = cache.get_or_compile(&renamed).unwrap();
    assert!(std::sync::Arc::ptr_eq(&k1, &k2));
    let k3 = cache.get_or_compile(&library::layernorm_fwd(1e-6)).unwrap();
    assert!(!std::sync::Arc::ptr_eq(&k1, &k3));
    assert_eq!(cache.len(), 2);
}

/// In-place update through the raw API (an executor's arena): AdamW writing param, m, v over its
/// inputs matches the out-of-place result.
#[test]
fn in_place_single_pass_through_run_raw() {
    let prog = library::adamw();
    let (rows, cols) = (3, 1001);
    let inp = make_inputs(&prog, rows, cols, 12, 1.0);
    let (_, k) = refs(&prog, &inp);
    let kernel = JitKernel::compile(&prog).unwrap();
    let want = run_jit(&kernel, &prog, &k, rows, cols, Parallelism::Auto);
    let mut p = inp.f[0].clone();
    let mut m = inp.f[2].clone();
    let mut v = inp.f[3].clone();
    let ins: Vec<*const u8> = (0..prog.inputs.len())
        .map(|j| match j {
            0 => p.as_ptr() as *const u8,
            2 => m.as_ptr() as *const u8,
            3 => v.as_ptr() as *const u8,
            _ => inp.f[j].as_ptr() as *const u8,
        })
        .collect();
    let outs = [
        p.as_mut_ptr() as *mut u8,
        m.as_mut_ptr() as *mut u8,
        v.as_mut_ptr() as *mut u8,
    ];
    // SAFETY: every buffer holds rows*cols (or 1) f32s; outputs alias inputs of a single-pass
    // program, which `run_raw` allows.
    unsafe { kernel.run_raw(&ins, &outs, rows, cols, Parallelism::Auto) }.unwrap();
    assert_eq!(p, want[0]);
    assert_eq!(m, want[1]);
    assert_eq!(v, want[2]);
}
