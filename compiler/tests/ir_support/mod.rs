//! Shared test support: a finite-difference gradient checker over the reference interpreter.
#![allow(dead_code)]

use std::collections::HashMap;

use kiln_compiler::autodiff::grad_wrt;
use kiln_compiler::interp::{run, RunOptions, Tensor};
use kiln_compiler::ir::{
    bind_shape, verify, Bindings, Builder, DType, Graph, Init, IrError, Op, ValueId,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub type TestRng = ChaCha8Rng;

pub fn rng(seed: u64) -> TestRng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// A random f64 tensor with values in [lo, hi).
pub fn rand_tensor(r: &mut TestRng, shape: &[usize], lo: f64, hi: f64) -> Tensor {
    let n: usize = shape.iter().product();
    Tensor::f64(
        shape.to_vec(),
        (0..n).map(|_| r.random_range(lo..hi)).collect(),
    )
}

/// A random i64 tensor with values in [0, hi).
pub fn rand_index(r: &mut TestRng, shape: &[usize], hi: i64) -> Tensor {
    let n: usize = shape.iter().product();
    Tensor::int(
        DType::I64,
        shape.to_vec(),
        (0..n).map(|_| r.random_range(0..hi)).collect(),
    )
}

/// Draws each param from its `Init::Uniform` range (params in gradient tests declare their domain
/// that way; other inits get [-1, 1)).
pub fn draw_params(r: &mut TestRng, g: &Graph, b: &Bindings) -> HashMap<String, Tensor> {
    let mut out = HashMap::new();
    for p in g.params() {
        if let Op::Param {
            name, shape, init, ..
        } = g.node(p).op()
        {
            let shape = bind_shape(shape, b).unwrap();
            let (lo, hi) = match init {
                Init::Uniform { low, high } => (*low, *high),
                _ => (-1.0, 1.0),
            };
            out.insert(name.clone(), rand_tensor(r, &shape, lo, hi));
        }
    }
    out
}

pub fn norm(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

/// `||a - b|| / max(||a||, ||b||)`, 0 when both vanish.
pub fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    let scale = norm(a).max(norm(b));
    if scale < 1e-12 {
        0.0
    } else {
        norm(&d) / scale
    }
}

/// The autodiff gradient (from the interpreter) and the central-difference gradient of
/// `loss` w.r.t. every param of `fwd`, by param name. `fwd` must have a scalar output "loss".
pub fn ad_and_fd(
    fwd: &Graph,
    b: &Bindings,
    inputs: &HashMap<String, Tensor>,
    params: &HashMap<String, Tensor>,
) -> Vec<(String, Vec<f64>, Vec<f64>)> {
    let loss = fwd.output("loss").expect("a loss output");
    let wrt = fwd.params();
    let gg = grad_wrt(fwd, loss, &wrt).expect("autodiff");
    if let Err(e) = verify(&gg.graph) {
        panic!("backward graph fails verification: {e:?}\n{}", gg.graph);
    }
    let opts = RunOptions::default();
    let out = run(&gg.graph, b, inputs, params, &opts).expect("run backward");
    let f = |ps: &HashMap<String, Tensor>| -> f64 {
        run(fwd, b, inputs, ps, &opts).expect("run forward").outputs["loss"].to_f64_vec()[0]
    };
    let mut res = Vec::new();
    for p in wrt {
        let name = fwd.node(p).op().source_name().unwrap().to_string();
        let base = params[&name].clone();
        let ad = match out.outputs.get(&format!("grad.{name}")) {
            Some(t) => t.to_f64_vec(),
            None => {
                assert!(
                    gg.zero.contains(&name),
                    "{name}: neither a gradient nor listed as zero"
                );
                vec![0.0; base.numel()]
            }
        };
        let mut fd = Vec::with_capacity(base.numel());
        let mut ps = params.clone();
        let base_v = base.to_f64_vec();
        for i in 0..base.numel() {
            let x = base_v[i];
            let h = 1e-6 * x.abs().max(1.0);
            let mut at = |v: f64| {
                let mut t = base_v.clone();
                t[i] = v;
                ps.insert(name.clone(), Tensor::f64(base.shape.clone(), t));
                f(&ps)
            };
            let fp = at(x + h);
            let fm = at(x - h);
            fd.push((fp - fm) / (2.0 * h));
        }
        ps.insert(name.clone(), base);
        res.push((name, ad, fd));
    }
    res
}

/// Builds `y = build(..)`, makes `loss = sum(y * proj)` with a random projection, and checks the
/// autodiff gradient of every param against central differences (rel. error <= 1e-6). Returns
/// the largest relative error. At least one param must have a nonzero gradient.
pub fn check_grad(
    label: &str,
    r: &mut TestRng,
    bindings: &Bindings,
    build: impl FnOnce(
        &mut Builder,
        &mut TestRng,
        &mut HashMap<String, Tensor>,
    ) -> Result<ValueId, IrError>,
) -> f64 {
    let mut bld = Builder::new();
    let mut inputs = HashMap::new();
    let y =
        build(&mut bld, r, &mut inputs).unwrap_or_else(|e| panic!("{label}: build failed: {e}"));
    let yt = bld.ty(y).clone();
    let proj = bld.input("proj", yt.shape.clone(), yt.dtype).unwrap();
    let prod = bld.mul(y, proj).unwrap();
    let loss = bld
        .reduce_sum(prod, (0..yt.rank()).collect(), false)
        .unwrap();
    bld.output("loss", loss).unwrap();
    let fwd = bld.finish();
    if let Err(e) = verify(&fwd) {
        panic!("{label}: forward graph fails verification: {e:?}\n{fwd}");
    }
    let pshape = bind_shape(&yt.shape, bindings).unwrap();
    inputs.insert("proj".to_string(), rand_tensor(r, &pshape, -1.0, 1.0));
    let params = draw_params(r, &fwd, bindings);
    let mut worst: f64 = 0.0;
    let mut any_nonzero = false;
    for (name, ad, fd) in ad_and_fd(&fwd, bindings, &inputs, &params) {
        let e = rel_err(&ad, &fd);
        any_nonzero |= norm(&fd) > 1e-9;
        assert!(
            e <= 1e-6,
            "{label}: gradient of `{name}` off by {e:e}\n ad {ad:?}\n fd {fd:?}\n{fwd}"
        );
        worst = worst.max(e);
    }
    assert!(
        any_nonzero,
        "{label}: every gradient is zero, the check would be vacuous"
    );
    worst
}

/// A float64 param drawn from [lo, hi) in gradient tests.
pub fn param(b: &mut Builder, name: &str, shape: &[i64], lo: f64, hi: f64) -> ValueId {
    let s = shape.iter().map(|d| (*d).into()).collect();
    b.param(name, s, DType::F64, Init::Uniform { low: lo, high: hi })
        .unwrap()
}
